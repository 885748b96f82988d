"""Harper's speech server for one GPU pod: streaming STT (`/ws/stt`) and TTS (`/ws/tts`) over WebSockets.

Flow: `cli` builds `settings.Settings` and runs `app.create_app`; its lifespan loads the `engines` in the
background; `sockets` admits connections and hands them to `stt.SttStream` (utterances committed pause by
pause, `utterance`; Whisper decodes batched across connections by `batcher`) / `tts.TtsSession` (Piper or
Chatterbox behind `gate`, frames paced by `pacing`), which speak `protocol`. `client` is the matching async
client. Nothing here loads a model at import time.
"""
