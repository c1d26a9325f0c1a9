"""Small vision transformers in Keras (ViT-style: patch embedding, class token or mean pooling,
pre-norm blocks of MultiHeadAttention and a GELU MLP), random weights."""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="onnxsight_tests")
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token to (N, T, D) tokens."""

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="random_normal", name="token")

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        return ops.concatenate([ops.broadcast_to(self.token, (batch, 1, tokens.shape[-1])), tokens], axis=1)


def vit(image: int = 16, patch: int = 4, width: int = 16, depth: int = 2, heads: int = 2, classes: int = 5,
        class_token: bool = True) -> keras.Model:
    """A ViT on ``image``² RGB inputs: (image/patch)² patch tokens (+ a class token), ``depth`` blocks."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((image, image, 3))
    x = layers.Conv2D(width, patch, strides=patch, name="patchify")(inputs)
    x = layers.Reshape(((image // patch) ** 2, width), name="tokens")(x)
    if class_token:
        x = ClassToken(name="class_token")(x)
    for i in range(depth):
        h = layers.LayerNormalization(name=f"block{i}_norm1")(x)
        h = layers.MultiHeadAttention(heads, width // heads, name=f"block{i}_attention")(h, h)
        x = layers.Add(name=f"block{i}_residual1")([x, h])
        h = layers.LayerNormalization(name=f"block{i}_norm2")(x)
        h = layers.Dense(2 * width, activation="gelu", name=f"block{i}_mlp1")(h)
        x = layers.Add(name=f"block{i}_residual2")([x, layers.Dense(width, name=f"block{i}_mlp2")(h)])
    x = layers.LayerNormalization(name="final_norm")(x)
    if class_token:
        pooled = layers.Flatten(name="pooled")(layers.Cropping1D((0, (image // patch) ** 2), name="class_out")(x))
    else:
        pooled = layers.GlobalAveragePooling1D(name="pooled")(x)
    return keras.Model(inputs, layers.Dense(classes, activation="softmax", name="preds")(pooled))
