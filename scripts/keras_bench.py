"""Keras (tensorflow-cpu) side of scripts/bench-keras.sh: the same CNN and LSTM as
model/src/net.rs, trained with Adam (lr 1e-3, MSE, batch 64, shuffled) on random
windows of shape [n, 30, 14]; prints one JSON line per architecture with the
seconds per epoch (mean of the epochs after the first, which includes tracing)."""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402


def cnn(window, features):
    x = inp = keras.Input((window, features))
    for _ in range(4):
        x = layers.Conv1D(10, 10, padding="same", activation="relu")(x)
    x = layers.Conv1D(1, 3, padding="same", activation="tanh")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(100, activation="tanh")(x)
    return keras.Model(inp, layers.Dense(1)(x))


def lstm(window, features):
    inp = keras.Input((window, features))
    return keras.Model(inp, layers.Dense(1)(layers.LSTM(64)(inp)))


def main():
    windows = int(sys.argv[1])
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    archs = sys.argv[3].split(",") if len(sys.argv) > 3 else ["cnn", "lstm"]
    rng = np.random.default_rng(0)
    x = rng.random((windows, 30, 14), dtype=np.float32)
    y = rng.random((windows, 1), dtype=np.float32)
    for arch in archs:
        model = (cnn if arch == "cnn" else lstm)(30, 14)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        times = []
        for _ in range(epochs):
            start = time.perf_counter()
            model.fit(x, y, batch_size=64, epochs=1, shuffle=True, verbose=0)
            times.append(time.perf_counter() - start)
        steady = times[1:] or times
        epoch_s = sum(steady) / len(steady)
        print(json.dumps({
            "framework": "keras",
            "backend": f"tensorflow-cpu {__import__('tensorflow').__version__}",
            "arch": arch,
            "windows": windows,
            "params": model.count_params(),
            "batch": 64,
            "first_epoch_s": round(times[0], 4),
            "epoch_s": round(epoch_s, 4),
            "windows_per_s": round(windows / epoch_s, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
