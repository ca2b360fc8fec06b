"""The NVRTC compile check (kernels/check.py): every registered instantiation compiles for sm_80 and
sm_90 without errors or warnings, and ptxas reports no spills. Skipped only when NVRTC 13 is not
installed (CI installs nvidia-cuda-nvrtc). And the layout the table relies on: no file in kernels/
imports in a circle, and family modules never import the registry."""

import pytest


def _nvrtc():
    from minigrad.kernels.check import NvrtcUnavailable, load_nvrtc

    try:
        return load_nvrtc()
    except NvrtcUnavailable as e:
        pytest.skip(f"NVRTC not installed: {e}")


def test_every_registered_kernel_compiles_without_warnings_or_spills():
    _nvrtc()
    from minigrad.kernels import registry
    from minigrad.kernels.check import format_report, run_check

    report = run_check(use_nvcc=False)  # the nvcc cross-check is left to `minigrad kernels check`
    assert not report.errors, format_report(report)
    expected = {(n, a) for cu in registry.cu_files() for n in registry.instantiations(cu) for a in ("sm_80", "sm_90")}
    got = {(r.name, r.arch) for r in report.rows}
    assert got == expected
    for r in report.rows:
        assert r.nvrtc.registers > 0 and r.nvrtc.spill_stores == 0 and r.nvrtc.spill_loads == 0


@pytest.mark.parametrize("body,message", [
    ("x[0] = undefined_name;", "NVRTC error"),
    ("int unused = 3; x[0] = T(1);", "NVRTC warnings"),  # warning #177-D fails the check
])
def test_check_fails_on_errors_and_warnings(tmp_path, monkeypatch, body, message):
    _nvrtc()
    from minigrad.kernels import check, layernorm, registry
    from minigrad.kernels.family import Kernel

    (tmp_path / "bad.cu").write_text(f"template <typename T> __global__ void k(T* x) {{ {body} }}\n")
    monkeypatch.setattr(check, "KERNEL_DIR", tmp_path)
    monkeypatch.setattr(registry, "KERNELS", [Kernel("bad", "bad.cu", {"k": "k"}, layernorm.FORWARD)])
    report = check.run_check(archs=("sm_80",), use_nvcc=False)
    assert any(message in e for e in report.errors), report.errors


def test_ptxas_report_parser_flags_spills():
    from minigrad.kernels.check import parse_ptxas

    log = """ptxas info    : Compiling entry function '_Z1kIfEvPT_' for 'sm_80'
ptxas info    : Function properties for _Z1kIfEvPT_
ptxas         .     24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 512 bytes smem, 360 bytes cmem[0]"""
    r = parse_ptxas(log)[("_Z1kIfEvPT_", "sm_80")]
    assert (r.registers, r.smem, r.stack, r.spill_stores, r.spill_loads) == (255, 512, 24, 8, 12)


def _kernels_import_graph(root):
    """{module: modules of kernels/ it imports}, from the AST of every file under root (function-local
    imports included); `from minigrad.kernels import x` counts as importing module x."""
    import ast

    files = {}
    for p in root.rglob("*.py"):
        name = ".".join(("minigrad.kernels", *p.relative_to(root).with_suffix("").parts))
        files[name.removesuffix(".__init__")] = p
    graph = {}
    for mod, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                assert not isinstance(node, ast.ImportFrom), f"{path}: relative imports are not read here"
                continue
            for n in names:
                while n and n not in files:
                    n = n.rpartition(".")[0]
                if n and n != mod:
                    deps.add(n)
        graph[mod] = deps
    return graph


def test_kernels_modules_import_no_circle():
    from test_layout import circles   # the one circle finder (tests/test_layout.py checks it finds one)

    from pathlib import Path

    import minigrad.kernels

    graph = _kernels_import_graph(Path(minigrad.kernels.__file__).parent)
    assert circles(graph) == set(), circles(graph)
    # the runtime knows no family (it reads sources through includes); family modules never import the table
    assert all(m.startswith("minigrad.kernels.emulate") or m == "minigrad.kernels.includes"
               for m in graph["minigrad.kernels.runtime"]), graph["minigrad.kernels.runtime"]
    for family in ("layernorm", "attention"):
        assert "minigrad.kernels.registry" not in graph[f"minigrad.kernels.{family}"]
    assert {"minigrad.kernels.layernorm", "minigrad.kernels.attention"} <= graph["minigrad.kernels.registry"]
