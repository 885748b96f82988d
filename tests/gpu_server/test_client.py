"""The client is what other packages import: it must not drag in the speech engines."""

import subprocess
import sys

ENGINE_MODULES = [
    "faster_whisper", "ctranslate2", "piper", "onnxruntime", "soxr", "torch", "fastapi", "gpu_server.engines",
]


def test_client_imports_only_websockets_numpy_and_av():
    code = (
        "import sys, gpu_server.client\n"
        f"loaded = [m for m in {ENGINE_MODULES!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "assert 'av' in sys.modules and 'opuslib' not in sys.modules and 'websockets' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
