"""TokTTS: character-level encoder-decoder TTS over 2-codebook EnCodec tokens (``model.py``).

Usage::

    from models.tts.toktts import text_to_speech_pipeline
    pipeline = text_to_speech_pipeline(model_dir)
    out = pipeline("I am happy you are here", top_k=50, top_p=1.0, temperature=1.0, seed=0)
    # {"audio": np.ndarray float32 (samples,), "sampling_rate": 24000}
"""

from models.tts.toktts.pipeline import (
    TextToSpeechPipeline,
    load_model_dir,
    save_model_dir,
    text_to_speech_pipeline,
)

__all__ = ["TextToSpeechPipeline", "load_model_dir", "save_model_dir", "text_to_speech_pipeline"]
