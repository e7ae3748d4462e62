"""DALLE-pytorch checkpoints (train_dalle.py's .pt) served through our own KV-cached transformer.

The tokenizer and the VAE live beside this (tokenizer.py, vae.py) and are imported inside
`load`, so the transformer and its checkpoint reader import alone; a reranker (--clip) is
loaded by `load_model` for every family (openclip.py).
"""
from __future__ import annotations

from pathlib import Path


from tessera.ops.families.base import ModelBundle, ModelLoadError, ModelSpec, SamplingDefaults

FILTER_THRES = 0.9  # DALLE-pytorch's generate.py: generate_images(..., filter_thres=0.9)


def default_top_k(total_tokens: int, image_vocab: int) -> int:
    """The k of DALLE-pytorch's top_k(logits, thres=0.9) over the full (text + image) logits,
    capped at the image vocabulary (text logits are masked at image positions)."""
    return min(max(int((1 - FILTER_THRES) * total_tokens), 1), image_vocab)


def load(spec: ModelSpec, device, dtype) -> ModelBundle:
    from tessera.ops.families.dalle_pytorch.checkpoint import parse_hparams, read_checkpoint
    from tessera.ops.families.dalle_pytorch.model import build_model

    if spec.path is None:
        raise ModelLoadError("dalle-pytorch: no checkpoint path given")
    ckpt = read_checkpoint(spec.path)
    source = ckpt["source"]
    hp = parse_hparams(ckpt)
    state = ckpt["weights"]
    model = build_model(hp, state, source, meta=str(device) == "meta").to(device=device, dtype=dtype)

    from tessera.ops.families.dalle_pytorch.tokenizer import load_tokenizer
    from tessera.ops.families.dalle_pytorch.vae import build_vae, read_vae_file

    tokenizer = load_tokenizer(spec.bpe_path, hp.text_seq_len)
    if tokenizer.vocab_size > hp.num_text_tokens:  # its ids would index past the text embedding
        raise ModelLoadError(
            f"{source}: the tokenizer ({tokenizer.name}) has {tokenizer.vocab_size} tokens but the checkpoint "
            f"was trained with num_text_tokens {hp.num_text_tokens}: pass the tokenizer it was trained with "
            f"(--bpe-path)")
    if spec.vae:
        vae_hparams, vae_state = read_vae_file(spec.vae)
        vae = build_vae("DiscreteVAE", vae_hparams, vae_state, spec.vae)
        vae_class = "DiscreteVAE"
        problems = []
        if int(vae.num_tokens) != hp.num_image_tokens:
            problems.append(f"{vae.num_tokens} image tokens, the transformer's embedding has {hp.num_image_tokens}")
        if int(vae.image_len) != hp.image_len:
            problems.append(f"{vae.image_len} tokens per image ({vae_hparams.get('num_layers', '?')} layers at "
                            f"{vae.image_size}px), the transformer's positions take {hp.image_len}")
        if problems:
            raise ModelLoadError(f"mismatched --vae {spec.vae} for {source}: " + "; ".join(problems))
    else:
        vae_class = hp.vae_class_name or "DiscreteVAE"
        vae = build_vae(vae_class, hp.vae_params, state, source)  # its `vae.` keys
        if int(vae.num_tokens) != hp.num_image_tokens or int(vae.image_len) != hp.image_len:
            raise ModelLoadError(f"{source}: its VAE ({vae.num_tokens} tokens, {vae.image_len} per image) does not "
                                 f"fit its transformer ({hp.num_image_tokens} tokens, {hp.image_len} per image)")
    vae = vae.to(device=device, dtype=dtype)  # the OP's precision (the pixel contract: docs/models.md)

    k = default_top_k(hp.total_tokens, hp.num_image_tokens)
    details = {
        "version": hp.version or "unknown",
        "vae_class": vae_class,
        "dim": hp.dim, "depth": hp.depth, "heads": hp.heads, "dim_head": hp.dim_head,
        "text_seq_len": hp.text_seq_len, "num_text_tokens": hp.num_text_tokens,
        "num_image_tokens": hp.num_image_tokens, "image_fmap_size": hp.image_fmap_size,
        "attn_types": ",".join(hp.attn_types), "rotary_emb": hp.rotary_emb, "shift_tokens": hp.shift_tokens,
        "stable": hp.stable, "sandwich_norm": hp.sandwich_norm, "reversible": hp.reversible,
        "share_input_output_emb": hp.share_input_output_emb,
        "shared_attn_ids": ",".join(map(str, hp.shared_attn_ids)) if hp.shared_attn_ids else "",
        "shared_ff_ids": ",".join(map(str, hp.shared_ff_ids)) if hp.shared_ff_ids else "",
        "top_k": k,
        "top_k_rule": (f"generate.py's filter_thres {FILTER_THRES}: max(int((1 - {FILTER_THRES}) * "
                       f"{hp.total_tokens} total tokens), 1), capped at {hp.num_image_tokens} image tokens"),
    }
    if hp.notes:
        details["notes"] = "; ".join(hp.notes)
    return ModelBundle(
        name=Path(spec.path).stem, tokenizer=tokenizer, dvae=vae, transformer=model, clip=None,
        sampling=SamplingDefaults(temperature=1.0, top_k=k, top_p=1.0, guidance_scale=1.0),
        kind="dalle-pytorch", details=details)
