"""Serving ``/v1/audio/transcriptions`` and ``/v1/audio/translations``.

The upload is in the blob store (the job's request names it); a worker copies it to a local
temporary file (:mod:`.local_copy`), shared by every thread of the worker that works on the
same job, and deletes the copy when the last of them is done. A handler that batches windows
(:class:`handlers.base.WindowBatchingSpeechModel`, both Whisper handlers) plans each request in
its job thread and has its windows decoded by the model's window batcher (:mod:`.batcher`),
with every other request's windows of the same options, the most urgent first. Any other
handler runs behind a per-model gate (:mod:`.gate`): one transcription at a time unless it
is thread-safe, the most urgent first (a sync request goes before the next part of a long job).

* **Sync requests** (and jobs no longer than about ``AUDIO_CHUNK_SEC``): the whole file in one
  ``transcribe`` call; each segment becomes a ``delta`` event when the client streams, and
  (jobs) a progress update (:mod:`.service`).
* **Long jobs** fan out (:mod:`.coordinator`). The job's task thread is the *coordinator*: it
  plans the parts (:mod:`.planning`): a handler that plans windows
  (:class:`handlers.base.WindowPlanningSpeechModel`, both Whisper handlers) runs its VAD once
  over the whole file, and consecutive windows (each <= 26 s, never cutting speech) are
  grouped into parts of at most ``AUDIO_CHUNK_SEC``, each part decoding exactly its windows
  (no VAD of its own, so no part boundary cuts speech); any other handler's file is cut into
  ranges ending at pauses. It stores the plan and the list of pending parts
  (:mod:`inferq.audio`), sends one helper task per part on the model's queue, and starts one
  local *puller* thread (:mod:`.parts`). A puller (local, or on any worker that
  received a helper task: at most one per job and worker) claims a pending part (with a window
  batcher: while its parts in flight hold fewer than two batches of windows and fewer than
  its share of the parts left; else once it holds the model's gate), transcribes
  that range (timestamps stay absolute), records the result
  once, and claims the next, until none are left. Meanwhile the coordinator publishes progress
  after every part (audio seconds done, total, fraction, and the segments so far), watches for
  cancellation and for parts claimed by a worker that stopped heart-beating (put back in the
  list), and finally merges the parts in order, renumbering the segments.

Crash safety: every Celery message is acknowledged late. A helper or a puller that dies
loses nothing: its claimed part goes back to the list once its worker's heartbeat expires.
If the coordinator's worker dies, its message is redelivered (after the visibility timeout);
the new coordinator finds the stored plan and the recorded parts and carries on.

The worker's state for audio (batchers, gates, local copies, pullers) lives in one
:class:`.service.AudioService`, owned by the worker runtime.
"""
