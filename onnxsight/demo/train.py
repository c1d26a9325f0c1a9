"""Train a seed architecture on a labelled dataset with Keras."""

from __future__ import annotations

from dataclasses import dataclass

from onnxsight.data.datasets import Dataset


@dataclass(frozen=True)
class Trained:
    """A trained Keras model and its accuracy on the test split."""

    model: object
    test_accuracy: float
    epochs: int


def train(build, data: Dataset, epochs: int = 8, batch_size: int = 64, seed: int = 0, progress=None) -> Trained:
    """Fit ``build(num_classes)`` with Nadam and cross-entropy (seed 000's recipe); ``progress(epoch)`` per epoch."""
    from onnxsight.converters.keras import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(seed)
    model = build(num_classes=len(data.class_names))
    model.compile(loss="sparse_categorical_crossentropy", optimizer="nadam", metrics=["accuracy"])
    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: progress(epoch + 1))] if progress else []
    model.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks)
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    return Trained(model, float(accuracy), epochs)
