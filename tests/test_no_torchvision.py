"""gc2bench's code paths never import torchvision.

install.sh leaves torchvision out next to a CPU torch (no registry build imports there), so `pip check`
reports that lmms-eval and timm require it. This test runs the main job (an in-vision and an in-LLM
method through lmms-eval's own tasks), the table, inspect and the OneVision model in one process, with a
finder that records every `import torchvision` (availability checks through importlib.util.find_spec,
which transformers makes, are not imports and are not recorded), and requires none.
"""

import json
import subprocess
import sys

from conftest import REPO

SCRIPT = r"""
import importlib.abc, json, os, runpy, sys, traceback

attempts = []

class RecordTorchvisionImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            caller = sys._getframe(1).f_back   # importlib's _find_spec is frame 1; who called it?
            if caller.f_code.co_name == "_find_and_load_unlocked":
                attempts.append("".join(traceback.format_stack(limit=12)))
        return None

sys.meta_path.insert(0, RecordTorchvisionImports())
results = sys.argv[1]
for compressor in ("globalcom2", "fastv"):
    sys.argv = ["run.py", f"compressor={compressor}", "ratio=0.5", f"results_dir={results}", "suite.limit=2",
                "tasks=[pope]", "hydra.run.dir=" + os.path.join(results, "hydra")]
    try:
        runpy.run_path("run.py", run_name="__main__")
    except SystemExit as end:
        assert not end.code, end.code
from gc2bench.cli import main
assert main(["table", results]) == 0
image = os.path.join(results, "image.png")
from PIL import Image
Image.new("RGB", (90, 60), (120, 30, 200)).save(image)
assert main(["inspect", f"image={image}", "compressor=fastv", "ratio=0.5"]) == 0
assert main(["inspect", f"image={image}", "model=tiny_onevision", "compressor=globalcom2", "compressor.score=cosine"]) == 0
print(json.dumps({"attempts": attempts, "loaded": "torchvision" in sys.modules}))
"""


def test_main_paths_never_import_torchvision(tmp_path, cache_dir):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [], "\n".join(report["attempts"])
    assert not report["loaded"]
