"""notebooks/codec_analysis.ipynb runs from top to bottom in this environment and draws its plots."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "codec_analysis.ipynb"
KERNEL_NAME = "python3"
EXPECTED_PLOTS = 3   # exponent histogram, bits/weight against the bound, savings by kind


def _runs_this_python(argv: list[str]) -> bool:
    # jupyter_client starts a spec whose command is a bare "python" with sys.executable
    bare = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    return argv[0] in bare or Path(argv[0]).resolve() == Path(sys.executable).resolve()


@pytest.fixture(scope="module")
def kernel_name() -> str:
    """The name of an ipykernel kernelspec that runs sys.executable (installed into sys.prefix if needed)."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        spec = None
    if spec is None or not _runs_this_python(spec.argv):
        install(kernel_name=KERNEL_NAME, prefix=sys.prefix)
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    if not _runs_this_python(spec.argv):
        pytest.fail(f"kernelspec {KERNEL_NAME!r} at {spec.resource_dir} runs {spec.argv[0]}, not {sys.executable}; "
                    f"a user-level kernelspec shadows the one in {sys.prefix}")
    return KERNEL_NAME


@pytest.mark.slow
def test_notebook_runs_and_draws_its_plots(kernel_name, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell that failed
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == EXPECTED_PLOTS


def test_saved_notebook_shows_its_plots():
    """The committed notebook keeps its outputs, so the plots show when browsing the repository."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == EXPECTED_PLOTS
    assert not [o for o in outputs if o.output_type == "error"]
