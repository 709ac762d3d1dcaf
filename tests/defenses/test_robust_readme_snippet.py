"""The README snippet (a robust rule dropped into a plain FedAvg loop) runs and defends."""

from __future__ import annotations

import contextlib
import io

# Keep this string identical to the README section "Drop a robust rule into your FedAvg loop".
SNIPPET = '''
import numpy as np
from defenses.robust import Krum  # or: from defenses.robust import make; make("krum", f=2)

rng = np.random.default_rng(0)
w_true = rng.normal(size=(5, 1))

def local_train(params, X, y, lr=0.1, steps=10):
    """A client's local SGD on least squares; params is a list of layers [W, b]."""
    W, b = (p.copy() for p in params)
    for _ in range(steps):
        err = X @ W + b - y
        W -= lr * X.T @ err / len(X)
        b -= lr * err.mean(axis=0)
    return [W, b]

clients = []
for _ in range(10):
    X = rng.normal(size=(50, 5)).astype(np.float32)
    clients.append((X, X @ w_true + 0.1 * rng.normal(size=(50, 1))))

params = [np.zeros((5, 1), np.float32), np.zeros(1, np.float32)]
rule = Krum(f=2)
for rnd in range(30):
    updates = []  # one list of per-layer arrays per client, as Flower hands them over
    for i, (X, y) in enumerate(clients):
        local = local_train(params, X, y)
        update = [l - g for l, g in zip(local, params)]
        if i < 2:  # two Byzantine clients send large, flipped updates
            update = [-20.0 * u for u in update]
        updates.append(update)
    agg = rule(updates)  # same form back: [dW (5, 1), db (1,)], same dtypes
    params = [g + a for g, a in zip(params, agg)]
result = rule.aggregate(updates)  # the full result as torch tensors: kept, flagged, scores

print("distance to w_true:", float(np.linalg.norm(params[0] - w_true)))
print("kept in last round:", result.kept.tolist())
'''


def test_readme_snippet_runs_and_resists_two_byzantine_clients() -> None:
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(SNIPPET, "README-snippet", "exec"), namespace)
    assert "distance to w_true" in out.getvalue()
    import numpy as np

    assert float(np.linalg.norm(namespace["params"][0] - namespace["w_true"])) < 0.1
    assert namespace["params"][0].dtype == np.float32
    assert not any(namespace["result"].kept.tolist()[:2])


def test_readme_snippet_diverges_with_the_plain_mean() -> None:
    namespace: dict = {}
    code = SNIPPET.replace("rule = Krum(f=2)", "from defenses.robust import Mean; rule = Mean()")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "README-snippet-mean", "exec"), namespace)
    import numpy as np

    assert float(np.linalg.norm(namespace["params"][0] - namespace["w_true"])) > 10.0
