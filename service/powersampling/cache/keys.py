"""Canonical request keys: a hash of everything that decides the answer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from powersampling.cache.base import CacheKey
from powersampling.params import SamplingParams

KEY_VERSION = 1  # bump when the sampler's output for the same request changes
MAX_TENANT_LENGTH = 128  # characters of a tenant name, the namespace of its cache entries


def request_key(fingerprint: str, tenant: str, prompt_ids: Sequence[int], params: SamplingParams) -> CacheKey:
    """Key of a request: model fingerprint, tenant, prompt token ids and every sampling parameter.

    The prompt enters as token ids, after the chat template: text and the equivalent messages share
    an entry, and a changed template makes a new one.
    """
    canonical = json.dumps(
        {
            "v": KEY_VERSION,
            "model": fingerprint,
            "tenant": tenant,
            "prompt": list(prompt_ids),
            "params": params.to_dict(),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return CacheKey(tenant=tenant, digest=hashlib.sha256(canonical.encode()).hexdigest())
