"""Settings for the whole test session.

Piper's speech is the input of most speech tests (Whisper must transcribe it back), and by default Piper
samples noise on every call, so one sentence comes out a little different each time and a word error
appears in one run out of several. With its noise at 0 the same text is always the same audio, and a
transcript check passes or fails for good. Every gpu_server a test starts, in-process or as a child
process, reads these from the environment. `make demo` and the benches keep Piper's own noise.
"""

import os

os.environ.setdefault("GPU_SERVER_PIPER_NOISE_SCALE", "0")
os.environ.setdefault("GPU_SERVER_PIPER_NOISE_W_SCALE", "0")
