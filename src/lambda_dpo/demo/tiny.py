"""A tiny tokenizer and a tiny Llama, built locally in seconds (no hub download), for the demo and the tests.

Tokenizer: byte-pair encoding (``tokenizers``) over word pieces. Pre-tokenisation marks a preceding space with
``▁`` (SentencePiece style, so decoding restores the text exactly) and isolates punctuation and numbers; a number
``d.dd`` becomes ``d.d`` + ``d`` (``0.50`` → ``0.5`` ``0``), so the λ line ``concise=0.50 detailed=0.20 polite=0.30``
costs 2 tokens per weight, and its first token (11 values, 0.0 … 1.0) carries the coarse weight a tiny model can
learn to read. With a vocabulary trained on the demo world every word it uses is one token.

Chat template (compact, so that sequences stay short)::

    <s><|system|>Preference weights: …<|end|><|user|>Tell me about Mars.<|end|><|assistant|>Of course! …<|end|>

``<|end|>`` is the eos token, so the response's label sequence ends with it and generation stops there; with
``add_generation_prompt=True`` the prompt ends with ``<|assistant|>``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "<|end|>", "<pad>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
# Pieces: a decimal's "d.d" head, single digits, words, single punctuation marks, whitespace.
# Each piece may carry the "▁" that stood for the space before it.
_PIECES = r"▁?\d\.\d|▁?\d|▁?[^\W\d_]+|▁?[^\w\s▁]|▁|\s"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on ``texts`` and wrap it as a ``PreTrainedTokenizerFast`` with a chat template.

    Every printable ASCII character is in the base alphabet, so any ASCII text encodes without ``<unk>`` and
    decodes back exactly; words seen in ``texts`` (in the context they occur) become single tokens when
    ``vocab_size`` allows. The numbers ``0.00`` … ``1.00`` are always in the training corpus so λ weights
    tokenize the same way whatever the texts.
    """
    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
            pre_tokenizers.Split(Regex(_PIECES), behavior="isolated"),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, PAD, BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=list(string.printable),
        show_progress=False,
    )
    numbers = [f"{i / 100:.2f}" for i in range(101)]
    backend.train_from_iterator([*texts, *numbers], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=ROLE_TOKENS,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    intermediate: int | None = None,
    max_positions: int = 256,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` sized for CPU: tied embeddings, ``intermediate = 2·hidden``.

    The defaults (hidden 128, 4 layers, 4 heads) give 0.73 M parameters with the demo world's 602-token
    vocabulary; 2 layers (0.41 M) already learn the world's SFT data in ~600 steps. Token ids
    (bos, eos, pad) come from ``tokenizer`` and are copied into the generation config, so ``generate`` stops at
    the eos token. Same ``seed``, same weights.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model
