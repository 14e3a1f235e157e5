"""Running OpenAI batches on a worker: plan (validate + cut into parts), run parts, finalize.

See ``inferq/batches.py`` for the flow and the Redis layout. Every step is safe to repeat:
a redelivered ``plan`` finds the batch no longer ``validating``; a redelivered ``part`` is
recorded once by ``RECORD_PART_SCRIPT``; ``finalize`` runs under a lock and only from a
non-final status.

- :mod:`.store`: the batch's Redis records, shared by the steps (``BatchStore``)
- :mod:`.planning`: validating the input file's lines and cutting it into parts
- :mod:`.running`: runners claiming parts, a part's lines run together (:mod:`.lines`)
- :mod:`.finalizing`: the sweep of due batches and assembling the output and error files
- :mod:`.runner`: ``BatchRunner``, the worker's one entry point to all of it
"""
