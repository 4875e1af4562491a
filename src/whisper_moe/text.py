"""Transcript text: cleaning SAP annotations and normalising for WER/CER.

Training keeps the natural text (case, punctuation) because Whisper writes it;
scoring compares normalised text so that "Turn on the lights." and "turn on the
lights" count as the same words. Beside our own normaliser, Whisper's English one
(maintained in transformers) is offered so that figures can be set against published
Whisper results, which use it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

_APOSTROPHES = "'\u2019\u2018\u02bc`"
_SQUARE_BRACKETED = re.compile(r"\[[^\[\]]*\]")
_PARENTHESISED = re.compile(r"\([^()]*\)")
_CURLY_BRACED = re.compile(r"\{[^{}]*\}")
_STRAY_MARKS = re.compile(r"[\[\](){}]")
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")


def normalize_transcript(text: str | None) -> str:
    """Text as scored by WER/CER. The rules, in order:

    1. Unicode NFKC (full-width letters, ligatures and similar become plain forms).
    2. Lower-case.
    3. Apostrophes are deleted inside words ("what's" -> "whats"), so contractions
       score as one word whichever apostrophe character was used.
    4. Every other punctuation or symbol character (Unicode categories P* and S*,
       hyphens included) becomes a space ("twenty-one" -> "twenty one").
    5. Whitespace runs collapse to one space; leading/trailing space is removed.

    Nothing is spelled out: digits stay digits and abbreviations stay as written,
    so references and hypotheses must use the same convention (the demo corpus and
    SAP spell numbers as words). None becomes "".
    """
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text).lower()
    for apostrophe in _APOSTROPHES:
        text = text.replace(apostrophe, "")
    text = "".join(" " if _is_punctuation_or_symbol(char) else char for char in text)
    return _WHITESPACE.sub(" ", text).strip()


WHISPER_ENGLISH = "whisper_english"
WHISPER_BASIC = "whisper_basic"


def whisper_normalizer(spelling_mapping: dict | None) -> tuple[Callable[[str | None], str], str]:
    """(normalise, name): Whisper's English normaliser when the British-to-American spelling
    mapping is known, else Whisper's basic one; the name says which, for the metrics file.

    The English normaliser is only the published one with its mapping (the tokenizer's
    `normalizer.json`), so without it the basic normaliser is used rather than a variant
    that matches neither. Both come from transformers; output whitespace is collapsed so
    character counts do not depend on stray spaces.
    """
    from transformers.models.whisper.english_normalizer import (
        BasicTextNormalizer,
        EnglishTextNormalizer,
    )

    if spelling_mapping:
        normaliser, name = EnglishTextNormalizer(dict(spelling_mapping)), WHISPER_ENGLISH
    else:
        normaliser, name = BasicTextNormalizer(), WHISPER_BASIC

    def normalise(text: str | None) -> str:
        return _WHITESPACE.sub(" ", normaliser(text or "")).strip()

    return normalise, name


def spelling_mapping_of(tokenizer) -> dict | None:
    """The English spelling mapping a Whisper tokenizer loaded from its `normalizer.json`
    (present for hub models and folders saved from them; None otherwise)."""
    mapping = getattr(tokenizer, "english_spelling_normalizer", None)
    return mapping if isinstance(mapping, dict) and mapping else None


def _is_punctuation_or_symbol(char: str) -> bool:
    """True for Unicode punctuation (P*) and symbols (S*)."""
    return unicodedata.category(char)[0] in "PS"


def clean_sap_transcript(raw: str | None) -> str:
    """The words actually spoken, from an SAP transcript with annotations.

    SAP transcripts mark non-speech and transcriber notes in brackets: a prefix such
    as "[question prompt]", marks such as "(disfluency)", "(laughs)" or "(cs:...)".
    All bracketed ([...]), parenthesised ((...)) and braced ({...}) spans are removed
    (innermost first, so nested marks go too), stray bracket characters are dropped,
    whitespace is collapsed and a space left before punctuation is closed up.
    Case and punctuation are kept: training targets stay natural text.
    An all-annotation transcript becomes "" (the validator skips it as empty).
    """
    if not raw:
        return ""
    text = raw
    for pattern in (_SQUARE_BRACKETED, _PARENTHESISED, _CURLY_BRACED):
        text = _remove_repeatedly(pattern, text)
    text = _STRAY_MARKS.sub(" ", text)
    text = _WHITESPACE.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text.strip(" ,;:")


# Parenthesised spans that name an event or hold a transcriber's tag rather than words spoken.
SAP_ANNOTATION_WORDS = frozenset({
    "disfluency", "laugh", "laughs", "laughter", "laughing", "cough", "coughs", "coughing",
    "noise", "breath", "breathing", "sigh", "sighs", "pause", "silence", "unintelligible",
    "inaudible", "crosstalk", "background", "music", "sneeze", "throat clear",
})
_INNER_PARENTHESISED = re.compile(r"\(([^()]*)\)")


def sap_transcript_with_disfluencies(raw: str | None) -> str:
    """The second SAP reference: the words spoken including disfluent ones.

    SAP's scoring accepts either reading of a disfluent utterance, so beside
    `clean_sap_transcript` (every annotated span removed) the import keeps this one:
    "[...]" and "{...}" spans are removed as there, but a parenthesised span keeps its
    words ("I (um) want (the the) water" -> "I um want the the water") unless it is an
    annotation: a tag with a colon such as "(cs:...)" or an event name from
    SAP_ANNOTATION_WORDS such as "(disfluency)" or "(laughs)", which goes. Scoring takes
    the lower error of the two references, so a span read wrongly here can only matter
    when a hypothesis says its words.
    """
    if not raw:
        return ""
    text = raw
    for pattern in (_SQUARE_BRACKETED, _CURLY_BRACED):
        text = _remove_repeatedly(pattern, text)
    while True:
        opened = _INNER_PARENTHESISED.sub(_open_or_drop, text)
        if opened == text:
            break
        text = opened
    text = _STRAY_MARKS.sub(" ", text)
    text = _WHITESPACE.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text.strip(" ,;:")


def _open_or_drop(match: re.Match) -> str:
    """A parenthesised span's words, or nothing when it is an annotation."""
    inner = _WHITESPACE.sub(" ", match.group(1)).strip()
    if ":" in inner or inner.lower() in SAP_ANNOTATION_WORDS:
        return " "
    return f" {inner} "


def _remove_repeatedly(pattern: re.Pattern, text: str) -> str:
    """Remove innermost matches until none are left (handles nesting like "((a) b)")."""
    while True:
        replaced = pattern.sub(" ", text)
        if replaced == text:
            return replaced
        text = replaced
