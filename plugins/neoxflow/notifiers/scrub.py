"""Remove secrets from text before it leaves for SNS, Slack or e-mail.

Alerts quote things we do not control: exception messages, Slurm log tails, connection-derived URLs.
Any of them can carry a token (``HF_TOKEN=...`` echoed by a job script, a presigned S3 URL, a
``https://user:pass@host`` remote). Alert channels are read by more people than the Airflow UI, and
messages there cannot be recalled, so every string goes through :func:`scrub` first. The rules err on
the side of hiding: a masked harmless value costs nothing, a leaked key costs a rotation.

Pure: no Airflow import, so the rules are unit-tested in isolation; the notifiers add Airflow's own
secrets masker (values of connections and sensitive Variables seen in the process) on top.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# Names whose value is a secret: ``name=value``, ``name: value``, ``"name": "value"``, ``--name value``.
# The name must END in one of these words (HF_TOKEN, aws_secret_access_key, db_password), so that
# tokenizer_type / train_tokens / secretary are left alone.
_SENSITIVE_NAME = (
    r"[A-Za-z0-9_.\-]*?"
    r"(?:passwords?|passwd|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key"
    r"|private[_-]?key|auth[_-]?key|ssh[_-]?key|credentials?|signature|sig|auth|authorization|cookie"
    r"|session[_-]?id|client[_-]?secret|webhook(?:[_-]?url)?|dsn|conn(?:ection)?[_-]?uri)"
)

_RULES: list[tuple[re.Pattern[str], str]] = [
    # PEM blocks: the whole block goes, including the armour lines.
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
        ),
        f"-----PRIVATE KEY {MASK}-----",
    ),
    # Credentials in URLs: scheme://user:pass@host and scheme://token@host.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@:]+(?::[^/\s@]*)?@"), rf"\1{MASK}@"),
    # Slack incoming-webhook paths are bearer credentials by themselves.
    (re.compile(r"(?i)(hooks\.slack\.com/(?:services|workflows|triggers)/)[^\s\"'<>]+"), rf"\1{MASK}"),
    # HTTP authorization headers: the scheme word goes too, it is the token's neighbour.
    (
        re.compile(
            r"(?i)(\bauthorization[\"']?\s*[:=]\s*)[\"']?(?:(?:bearer|basic|token|digest)\s+)?[^\s\"',;]+[\"']?"
        ),
        rf"\1{MASK}",
    ),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*"), rf"\1 {MASK}"),
    # --name value / --name=value on command lines.
    (re.compile(rf"(?i)(--{_SENSITIVE_NAME}(?:=|\s+))(?![-\s])[^\s\"']+"), rf"\1{MASK}"),
    # name=value, name: value, "name": "value" (env exports, query strings, JSON, log lines).
    (
        re.compile(
            rf"(?i)(\b{_SENSITIVE_NAME}\b[\"']?\s*[:=]\s*)"
            rf"(?!{re.escape(MASK)})(?:\"[^\"\n]*\"|'[^'\n]*'|[^\s,;&\"'<>]+)"
        ),
        rf"\1{MASK}",
    ),
    # Well-known token shapes that can appear without a name in front of them.
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"), MASK),  # AWS key ids
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), MASK),  # Slack tokens
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), MASK),  # GitHub tokens
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}"), MASK),
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}"), MASK),  # Hugging Face tokens
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}"), MASK),  # OpenAI-style API keys
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"), MASK),  # JWTs
]

# A run of 40+ base64 characters mixing upper case, lower case and digits is what an AWS secret access
# key or a PEM body line looks like; hex digests (lower case only), words and paths (many "/") do not.
_RANDOM_WORD = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40,}={0,2}(?![A-Za-z0-9/+=])")


def _mask_random_word(match: re.Match[str]) -> str:
    word = match.group(0)
    mixed = (
        any(c.isupper() for c in word) and any(c.islower() for c in word) and any(c.isdigit() for c in word)
    )
    return MASK if mixed and word.count("/") <= 2 else word


def scrub(text: str, known_secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret-looking value replaced by ``***``.

    Scrub a log tail as one block (lines joined), not line by line: a PEM key spans lines.

    :param known_secrets: literal values to hide wherever they appear (e.g. a connection's password);
        values shorter than 4 characters are ignored, masking them would shred ordinary words.
    """
    if not text:
        return text
    for secret in sorted({s for s in known_secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return _RANDOM_WORD.sub(_mask_random_word, text)
