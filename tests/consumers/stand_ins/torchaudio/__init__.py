"""A stand-in for torchaudio in the LLaMA-Factory test environment only.

LLaMA-Factory imports torchaudio at the top of its multimodal plugin, and the package index has
no torchaudio build for torch 2.13 (the CPU torch lpt pins). Our exports carry no audio, so
nothing here is ever called; a call fails loudly. transformers does not take this for the real
package (it has no distribution metadata), so its own audio paths stay off."""


def __getattr__(name: str):
    raise ImportError(f"torchaudio.{name}: the real torchaudio is not installed in this test environment")
