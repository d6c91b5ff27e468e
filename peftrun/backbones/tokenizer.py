"""Tokenizers: family special-token conventions, the locally trained tiny tokenizers and their cache.

Conventions ("styles", a `Specials` each) are declared by the family modules (peftrun/backbones/families/),
named after the model type that defines them, e.g.

    gpt2    <|endoftext|> is bos = eos = unk, pad = eos, no template          (GPT-2)
    bart    <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4, "<s> x </s>", pairs "<s> a </s></s> b </s>"   (BART, RoBERTa)
    t5      <pad>=0 </s>=1 <unk>=2, "x </s>", pairs "a </s> b </s>"          (T5)
    bert    [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, "[CLS] x [SEP]", pairs "[CLS] a [SEP] b [SEP]"  (BERT)
    llama   <unk>=0 <s>=1 </s>=2, pad = eos, no template                      (Llama, Mistral)

The tiny tokenizers are byte-level BPE (any text tokenizes; unseen words fall back to bytes) trained on
`corpus.corpus_text()` and cached under `<cache_dir>/tokenizers/tiny-<style>-<content hash>/`, the hash
covering the recipe, the corpus and the `tokenizers` version, so a cache entry never goes stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftrun.backbones.corpus import corpus_text
from peftrun.errors import PeftrunError, first_line
from peftrun.io import current_umask

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

TINY_VOCAB_SIZE = 2000  # target; the trained vocabulary is smaller when the corpus has fewer frequent merges
TINY_MAX_LENGTH = 512  # = the tiny models' max positions
RECIPE_VERSION = 1  # bump when the training recipe changes, to invalidate caches


@dataclass(frozen=True)
class Specials:
    """One family's special tokens (`tokens` in id order for a tiny tokenizer) and template.

    single / pair: `tokenizers` TemplateProcessing strings, or None (no template, or RoBERTa's processor when
    `roberta_processor`); the transformers-side roles (bos, eos, ...) are what `tokenizer.<role>_token_id` reads.
    decoder_start: the token an encoder-decoder's decoder starts from (BART: </s>, T5: <pad>).
    token_type_ids: whether the tokenizer returns segment ids (BERT: 0 for the first text, 1 for the second).
    """

    tokens: tuple[str, ...]
    bos: str | None = None
    eos: str | None = None
    unk: str | None = None
    pad: str | None = None
    mask: str | None = None
    cls: str | None = None
    sep: str | None = None
    single: str | None = None
    pair: str | None = None
    roberta_processor: bool = False
    decoder_start: str | None = None
    token_type_ids: bool = False  # the tokenizer returns segment ids (BERT's pairs)


def special_token_ids(tokenizer: PreTrainedTokenizerFast, specials: Specials, encoder_decoder: bool) -> dict[str, int]:
    """Model-config ids (pad/bos/eos/decoder_start_token_id) that agree with `tokenizer`, for roles it has."""
    ids = {f"{role}_token_id": getattr(tokenizer, f"{role}_token_id") for role in ("pad", "bos", "eos")}
    if encoder_decoder and specials.decoder_start is not None:
        ids["decoder_start_token_id"] = tokenizer.convert_tokens_to_ids(specials.decoder_start)
    return {key: value for key, value in ids.items() if value is not None}


def style_for(model_type: str) -> Specials:
    """The special-token convention of a `config.model_type` (declared by its family module)."""
    from peftrun.backbones.families import style_name_of, style_named

    return style_named(style_name_of(model_type))


def style(name: str) -> Specials:
    """The special-token convention `name` ("gpt2", "bart", "t5", "bert", "llama" ...)."""
    from peftrun.backbones.families import style_named

    return style_named(name)


def apply_specials(tok: Tokenizer, specials: Specials) -> None:
    """Add the special tokens (missing ones are appended) and install the family's post-processor."""
    from tokenizers import AddedToken, processors

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.tokens])
    ids = {t: tok.token_to_id(t) for t in specials.tokens}
    if specials.roberta_processor:
        tok.post_processor = processors.RobertaProcessing(
            (specials.sep, ids[specials.sep]), (specials.cls, ids[specials.cls]), trim_offsets=True,
            add_prefix_space=False,
        )
    elif specials.single is not None:
        used = [t for t in specials.tokens if t in specials.single or t in (specials.pair or "")]
        tok.post_processor = processors.TemplateProcessing(
            single=specials.single, pair=specials.pair, special_tokens=[(t, ids[t]) for t in used]
        )


def wrap(tok: Tokenizer, specials: Specials, max_length: int) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer around `tok` whose `<role>_token(_id)` attributes follow `specials`."""
    from transformers import PreTrainedTokenizerFast

    roles = {f"{role}_token": getattr(specials, role) for role in ("bos", "eos", "unk", "pad", "mask", "cls", "sep")}
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if specials.token_type_ids else ["input_ids",
                                                                                                "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=max_length, model_input_names=inputs,
        **{k: v for k, v in roles.items() if v is not None},
    )


def _recipe(style_name: str, vocab_size: int) -> dict:
    import tokenizers

    corpus_hash = hashlib.sha256(corpus_text().encode("utf-8")).hexdigest()
    return {"recipe": RECIPE_VERSION, "style": style_name, "specials": asdict(style(style_name)), "vocab_size": vocab_size,
            "min_frequency": 2, "max_length": TINY_MAX_LENGTH, "corpus_sha256": corpus_hash,
            "tokenizers": tokenizers.__version__}


def train_tiny_tokenizer(style_name: str, vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the style's special tokens (ids 0..n-1) on the embedded corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = style(style_name)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(specials.tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    if specials.single is None and not specials.roberta_processor:
        from tokenizers import processors

        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    apply_specials(tok, specials)
    return wrap(tok, specials, TINY_MAX_LENGTH)


def tiny_tokenizer_dir(style_name: str, cache_dir: str, vocab_size: int = TINY_VOCAB_SIZE) -> Path:
    """Where the tiny tokenizer of a style is cached: `<cache_dir>/tokenizers/tiny-<style>-<hash12>`."""
    digest = hashlib.sha256(json.dumps(_recipe(style_name, vocab_size), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / "tokenizers" / f"tiny-{style_name}-{digest}"


def load_tiny_tokenizer(style_name: str, cache_dir: str,
                        vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The tiny tokenizer of a style, trained once and then read from the cache.

    The cache entry is written to a temporary sibling directory and renamed into place, so concurrent runs
    never see a half-written tokenizer (the loser of a race discards its copy and reads the winner's).
    """
    from transformers import PreTrainedTokenizerFast

    style(style_name)  # an unknown name fails here, naming the known ones
    final = tiny_tokenizer_dir(style_name, cache_dir, vocab_size)
    if (final / "tokenizer.json").is_file():
        try:
            return PreTrainedTokenizerFast.from_pretrained(str(final))
        except Exception as err:  # a corrupt or planted cache entry (JSON only: nothing in it can run) is rebuilt
            logging.getLogger(__name__).warning("ignoring unusable tokenizer cache entry %s (%s); rebuilding it",
                                                final, first_line(err))
            shutil.rmtree(final, ignore_errors=True)
    if not (final / "tokenizer.json").is_file():
        tokenizer = train_tiny_tokenizer(style_name, vocab_size)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        except OSError as err:
            raise PeftrunError(f"cannot write the tokenizer cache under {final.parent}: {err}; "
                               "set paths.cache_dir (or PEFTRUN_CACHE_DIR) to a writable directory") from err
        try:
            tokenizer.save_pretrained(str(tmp))
            (tmp / "peftrun_recipe.json").write_text(json.dumps(_recipe(style_name, vocab_size), indent=2) + "\n")
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp gives 0700; a shared cache follows the umask
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / "tokenizer.json").is_file():  # not a lost race: a real write failure
                raise
    return PreTrainedTokenizerFast.from_pretrained(str(final))
