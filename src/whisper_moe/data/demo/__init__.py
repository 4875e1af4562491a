"""The offline demo corpus: synthetic English speech of speaker groups, made with espeak-ng.

`sentences` holds the text, `espeak` the speech engine binding, `plan` who says what
in which voice, and `corpus` turns a plan into WAVs and speaker-disjoint manifests.
"""

from whisper_moe.data.demo.corpus import make_demo_corpus
from whisper_moe.data.demo.espeak import available_voices
from whisper_moe.data.demo.plan import DEFAULT_GROUPS, plan_demo_corpus
from whisper_moe.data.demo.sentences import SENTENCES

__all__ = ["DEFAULT_GROUPS", "SENTENCES", "available_voices", "make_demo_corpus", "plan_demo_corpus"]
