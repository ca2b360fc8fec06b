"""The README's 20-line example runs as printed and its gradients are right."""
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs_and_its_gradient_matches_central_differences(capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    assert len(code.strip().splitlines()) <= 25
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)           # gradcheck/gradgradcheck inside raise on failure
    x, w, f = ns["x"], ns["w"], ns["f"]
    import minigrad as mg
    h = 1e-6
    num = np.zeros(x.shape)
    for i in range(x.shape[0]):
        xp, xm = x.numpy(), x.numpy()
        xp[i] += h
        xm[i] -= h
        num[i] = (f(mg.Tensor(xp), w).item() - f(mg.Tensor(xm), w).item()) / (2 * h)
    assert np.allclose(ns["x"].grad.numpy(), num, rtol=1e-6, atol=1e-8)
    assert ns["hvp"].shape == x.shape
    assert "(5, 3)" in capsys.readouterr().out
