"""Stand-in models and cascades for the cascade's tests: small Keras models whose outputs are chosen."""

import keras
import numpy as np
import tensorflow as tf

from steeldefect import metrics
from steeldefect.cascade import Cascade

SIZE = (64, 320)


def constant_classifier(probabilities):
    """A stand-in classifier whose outputs are fixed (its Dense layer has zero weights and a chosen bias)."""
    probabilities = np.asarray(probabilities, np.float32)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    layer = keras.layers.Dense(len(probabilities), activation="sigmoid")
    outputs = layer(x)
    layer.set_weights([np.zeros((3, len(probabilities)), np.float32), np.log(probabilities / (1 - probabilities))])
    return keras.Model(inputs, outputs, name="efficientnetb0_stand-in")


def constant_unet(mask):
    """A stand-in segmentation model that predicts ``mask`` (h, w, c) for every image."""
    constant = tf.constant(mask.astype(np.float32))
    inputs = keras.Input((*SIZE, 3))
    outputs = keras.layers.Lambda(lambda x: tf.broadcast_to(constant, (tf.shape(x)[0], *constant.shape)))(inputs)
    return keras.Model(inputs, outputs)


def square(class_size=(20, 40)):
    mask = np.zeros((*SIZE, 1), np.float32)
    mask[10 : 10 + class_size[0], 50 : 50 + class_size[1]] = 0.9
    return mask


def make(defect=0.9, classes=(0.1, 0.1, 0.8, 0.1), masks=None, **kwargs):
    masks = masks or {c: constant_unet(square()) for c in (1, 2, 3, 4)}
    return Cascade(constant_classifier([defect]), constant_classifier(classes), masks, SIZE, **kwargs)


IMAGE = np.full((*SIZE, 3), 120, np.uint8)


def conv_block(x, filters: int):
    for _ in range(2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.Activation("relu")(keras.layers.BatchNormalization(momentum=0.9)(x))
    return x


def small_model(outputs: int, segmentation: bool) -> keras.Model:
    """A small CNN on uint8 images at half resolution: a classifier (global max pooling) or a two-level UNet."""
    inputs = keras.Input((*SIZE, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(keras.layers.Lambda(lambda t: tf.cast(t, "float32"))(inputs))
    level1 = conv_block(keras.layers.AveragePooling2D(2)(x), 16)
    level2 = conv_block(keras.layers.MaxPooling2D()(level1), 32)
    x = conv_block(keras.layers.MaxPooling2D()(level2), 64)
    if segmentation:
        x = conv_block(keras.layers.Concatenate()([keras.layers.UpSampling2D()(x), level2]), 32)
        x = conv_block(keras.layers.Concatenate()([keras.layers.UpSampling2D()(x), level1]), 16)
        x = keras.layers.Activation("sigmoid")(keras.layers.UpSampling2D(2)(keras.layers.Conv2D(outputs, 1)(x)))
        loss = metrics.SEGMENTATION_LOSSES["bce_dice"]
    else:
        x = keras.layers.Dense(outputs, activation="sigmoid")(keras.layers.GlobalMaxPooling2D()(x))
        loss = "binary_crossentropy"
    model = keras.Model(inputs, x)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss)
    return model
