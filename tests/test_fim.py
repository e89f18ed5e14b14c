"""FIM formats: every format renders its sentinels, and the tokenizer check catches a wrong template."""

from __future__ import annotations

import pytest

from intarsia.model.errors import FimFormatError
from intarsia.model.fim import (
    CODELLAMA,
    DEEPSEEK_CODER,
    FORMATS,
    QWEN25_CODER,
    STARCODER,
    STARCODER2,
    RepoFile,
    detect_format,
    get_format,
)


@pytest.fixture(scope="module")
def qwen_lookup(tmp_path_factory):
    from tokenizers import Tokenizer

    from tiny import tokenizer_dir

    d = tokenizer_dir(tmp_path_factory.mktemp("tok"))
    return Tokenizer.from_file(str(d / "tokenizer.json"))


def test_qwen_plain_render():
    p = QWEN25_CODER.render("def f(x):\n    return ", "\n\nprint(f(1))\n")
    assert p == "<|fim_prefix|>def f(x):\n    return <|fim_suffix|>\n\nprint(f(1))\n<|fim_middle|>"


def test_qwen_repo_level_render():
    files = [RepoFile("pkg/util.py", "def helper():\n    return 1"), RepoFile("pkg/b.py", "X = 2\n")]
    p = QWEN25_CODER.render("import pkg\n", "", repo_name="acme", context_files=files, path="pkg/main.py")
    assert p.startswith("<|repo_name|>acme\n<|file_sep|>pkg/util.py\ndef helper():\n    return 1\n")
    assert "<|file_sep|>pkg/b.py\nX = 2\n<|file_sep|>pkg/main.py\n<|fim_prefix|>import pkg\n" in p
    assert p.endswith("<|fim_suffix|><|fim_middle|>")


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_every_format_renders_its_sentinels_in_order(fmt):
    p = fmt.render("PRE", "SUF")
    i, j, k = p.index(fmt.prefix_token), p.index(fmt.suffix_token), p.index(fmt.middle_token)
    assert i < p.index("PRE") < j < p.index("SUF") < k
    assert p.endswith(fmt.middle_token)
    assert fmt.training_text(p, "MID").endswith("MID" + fmt.end_tokens[0])
    # Stop strings include the end tokens and the sentinels.
    assert set(fmt.end_tokens) <= set(fmt.stop_strings)
    assert fmt.prefix_token in fmt.stop_strings


def test_codellama_spacing():
    assert CODELLAMA.render("a", "b") == "<PRE> a <SUF>b <MID>"


def test_formats_without_repo_tokens_render_context_as_comments():
    p = DEEPSEEK_CODER.render("x = 1\n", "", context_files=[RepoFile("a.py", "A = 1")])
    assert p.startswith("<｜fim▁begin｜># a.py\nA = 1\nx = 1\n")


def test_starcoder_repo_tokens():
    p2 = STARCODER2.render("a", "b", repo_name="r", context_files=[RepoFile("f.py", "c")])
    assert p2 == "<repo_name>r\n<file_sep>f.py\nc\n<fim_prefix>a<fim_suffix>b<fim_middle>"
    p = STARCODER.render("a", "b", repo_name="r", context_files=[RepoFile("f.py", "c")])
    assert p.startswith("<reponame>r\n<filename>f.py\nc\n<fim_prefix>a")


def test_real_tokenizer_has_qwen_tokens_each_one_token(qwen_lookup):
    QWEN25_CODER.check_tokenizer(qwen_lookup.token_to_id)
    for tok in QWEN25_CODER.special_tokens:
        assert len(qwen_lookup.encode(tok, add_special_tokens=False).ids) == 1, tok
    assert detect_format(qwen_lookup.token_to_id) is QWEN25_CODER


@pytest.mark.parametrize("fmt", [STARCODER2, DEEPSEEK_CODER, CODELLAMA])
def test_wrong_template_is_refused(qwen_lookup, fmt):
    with pytest.raises(FimFormatError) as e:
        fmt.check_tokenizer(qwen_lookup.token_to_id, model_name="qwen")
    assert fmt.prefix_token in str(e.value) and "\n" not in str(e.value)


def test_aliases_are_accepted():
    vocab = {"▁<PRE>": 1, "▁<SUF>": 2, "▁<MID>": 3, "▁<EOT>": 4}
    CODELLAMA.check_tokenizer(vocab.get)
    assert detect_format(vocab.get) is CODELLAMA


def test_tokenizer_without_fim_tokens():
    with pytest.raises(FimFormatError):
        detect_format({"a": 1}.get)


def test_unknown_format_name():
    with pytest.raises(FimFormatError, match="unknown fill-in-the-middle format"):
        get_format("nope")


def test_literal_sentinels_in_user_text_are_escaped(qwen_lookup):
    src = 'FIM = "<|fim_prefix|>"  # and <|endoftext|>\n'
    p = QWEN25_CODER.render(src, "x = '<|fim_middle|>'\n", context_files=[RepoFile("a<|file_sep|>.py", "<|repo_name|>")])
    ids = qwen_lookup.encode(p, add_special_tokens=False).ids
    specials = [qwen_lookup.token_to_id(t) for t in QWEN25_CODER.special_tokens]
    counts = {t: ids.count(i) for t, i in zip(QWEN25_CODER.special_tokens, specials)}
    # Only the template's own sentinels remain special tokens.
    assert counts["<|fim_prefix|>"] == 1 and counts["<|fim_middle|>"] == 1 and counts["<|fim_suffix|>"] == 1
    assert counts["<|endoftext|>"] == 0 and counts["<|file_sep|>"] == 1 and counts["<|repo_name|>"] == 1
    assert "fim_prefix" in qwen_lookup.decode(ids, skip_special_tokens=True)
