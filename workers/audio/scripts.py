"""The Lua scripts of a long job's parts (:mod:`inferq.audio`), registered once per worker."""

from __future__ import annotations

from inferq import audio as a


class Scripts:
    """The part scripts of :mod:`inferq.audio`, registered once per worker."""

    def __init__(self, client):
        self.claim = client.register_script(a.CLAIM_SCRIPT)
        self.record = client.register_script(a.RECORD_SCRIPT)
        self.release = client.register_script(a.RELEASE_SCRIPT)
        self.publish = client.register_script(a.PUBLISH_SCRIPT)
