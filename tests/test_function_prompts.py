"""generateFunction's strategies (core.function_prompts, core.functions): the chat question rendered from a
template, code and body extraction from answers, placeholder refusal, mode selection and the setting, the base
model request, and the session path with the test engine. Fast: tree-sitter and the test engine only."""

from __future__ import annotations

import pytest

from intarsia.grammars.registry import get_language
from intarsia.model.chat import ChatMessage, ChatTemplateError, read_chat_template, render_chat
from intarsia.model.engine import BASE_ADAPTER
from intarsia.model.fim import QWEN25_CODER
from intarsia.model.test_engine import TestEngine
from intarsia.server.core import documents as D
from intarsia.server.core import function_prompts as fp
from intarsia.server.core import functions as F
from intarsia.server.lsp.settings import Settings, parse_settings

PY = get_language("python")

QWEN_LIKE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}{{- '<|im_start|>' + message.role + '\\n' + "
    "message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

ADD = 'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Add two numbers."""\n    pass\n'


def _snap(src: str, offset: int, path: str = "m.py"):
    return D.Document("file:///w/" + path, src, 1, "python", path=path).snapshot(offset, invoked=True)


# ---- the chat template ------------------------------------------------------------------------------------------


def test_renders_the_models_own_template(tmp_path):
    (tmp_path / "chat_template.jinja").write_text(QWEN_LIKE)
    template = read_chat_template(tmp_path)
    text = render_chat(template, [ChatMessage("user", "hi")])
    assert text == "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n" \
                   "<|im_start|>assistant\n"
    assert render_chat(template, [ChatMessage("user", "hi")], add_generation_prompt=False).endswith("<|im_end|>\n")


def test_template_from_tokenizer_config_and_none(tmp_path):
    assert read_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": [{"name": "default", "template": "X"}]}')
    assert read_chat_template(tmp_path) == "X"


def test_template_runs_in_a_sandbox():
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", [ChatMessage("user", "x")])
    with pytest.raises(ChatTemplateError, match="refused"):
        render_chat("{{ raise_exception('no system role') }}", [ChatMessage("user", "x")])


def test_a_model_without_a_template_says_so():
    eng = TestEngine(chat_template=None)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        eng.render_chat([ChatMessage("user", "x")])
    out = F.generate_function(_snap(ADD, ADD.index("add")), engine=eng, fim_format=QWEN25_CODER, mode="chat")
    assert not out.ok and "no chat template" in out.reason


# ---- the question -----------------------------------------------------------------------------------------------


def test_question_shows_imports_definitions_class_and_docstring():
    src = ('import math\nfrom typing import List\n\nLIMIT = 3\n\n\ndef helper(x):\n    return x * 2\n\n\n'
           'class Shape(Base):\n    """A shape."""\n    sides = 0\n\n    def __init__(self, n):\n        self.n = n\n\n'
           '    def other(self, y) -> int:\n        return y + 1\n\n'
           '    @staticmethod\n    def area(r: float) -> float:\n        """Area of it."""\n        pass\n\n\n'
           'def after():\n    return 0\n')
    t = F.find_function_target(src, src.index("def area") + 5, PY)
    assert t.class_name == "Shape" and t.params == ("r",) and src[t.fn_start:].startswith("@staticmethod")
    view = fp.file_view(src, PY, t.fn_start, t.start, count=lambda s: len(s.split()), budget=1000)
    assert view.startswith("import math\nfrom typing import List\n")
    assert "LIMIT = 3" in view and "def helper(x):\n    return x * 2" in view
    assert "class Shape(Base):\n    \"\"\"A shape.\"\"\"\n    sides = 0" in view
    assert "    def __init__(self, n):\n        self.n = n" in view  # __init__ in full: the attributes
    assert "    def other(self, y) -> int:\n        ..." in view and "y + 1" not in view
    assert view.endswith('    @staticmethod\n    def area(r: float) -> float:\n        """Area of it."""')
    assert "after" not in view and "pass" not in view
    q = fp.chat_prompt(t.name, view, class_name=t.class_name, files=(), path="shapes.py")
    (msg,) = q.messages
    assert msg.role == "user" and "`area` (a method of class `Shape`)" in msg.content
    assert msg.content.endswith("```python\n" + view + "\n```")
    assert q.response_prefix.endswith("```python\n")
    # The answer opens with the function's own decorators, signature and docstring, at column 0: the model
    # writes only the body.
    header = fp.answer_header(src, t.fn_start, t.start)
    assert header == '@staticmethod\ndef area(r: float) -> float:\n    """Area of it."""\n'
    q = fp.chat_prompt(t.name, view, class_name=t.class_name, files=(), path="shapes.py", header=header)
    assert q.response_prefix.endswith("```python\n" + header)
    answer = q.response_prefix + "    return 3.14 * r * r\n```\n"
    got = fp.extract_body(answer, name=t.name, language=PY, indent="        ", params=t.params,
                          class_name=t.class_name, file_names=fp.file_bindings(src, PY, None), newline="\n")
    assert isinstance(got, fp.Extracted) and got.body == "return 3.14 * r * r"


def test_question_keeps_within_the_budget():
    big = "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(50))
    src = "import os\n\n\n" + big + 'def g(y):\n    """Doc."""\n    pass\n'
    t = F.find_function_target(src, src.index("def g") + 5, PY)
    view = fp.file_view(src, PY, t.fn_start, t.start, count=lambda s: len(s.split()), budget=60)
    assert view.startswith("import os") and view.endswith('def g(y):\n    """Doc."""')
    assert "def f49" in view and "def f0(" not in view  # nearest first
    assert len(view.split()) <= 60


# ---- the answer -------------------------------------------------------------------------------------------------


def _body(answer: str, **kw):
    kw = {"name": "add", "language": PY, "indent": "    ", "params": ("a", "b"),
          "file_names": fp.file_bindings(ADD, PY), **kw}
    return fp.extract_body(answer, **kw)


def test_code_blocks():
    assert fp.code_blocks("text\n```python\na = 1\n```\nmore\n```\nb = 2\n```\n") == [("python", "a = 1"),
                                                                                       ("", "b = 2")]
    assert fp.code_blocks("```py\nx = 1\n") == [("py", "x = 1\n")]  # cut answer: the block runs to the end
    assert fp.code_blocks("def f():\n    pass") == [("", "def f():\n    pass")]  # no fence


@pytest.mark.parametrize("answer, body", [
    # the fenced function, docstring dropped
    ('Here:\n```python\ndef add(a, b):\n    """Add."""\n    return a + b\n```\nIt adds.', "return a + b"),
    # several fences: the one that defines the function
    ('```python\nimport os\n```\n```python\ndef add(a, b):\n    return a + b\n```\n```python\nprint(add(1, 2))\n```',
     "return a + b"),
    # no fence at all
    ("def add(a, b):\n    total = a + b\n    return total\n", "total = a + b\n    return total"),
    # renamed, same parameters
    ("```python\ndef add_numbers(a, b):\n    return a + b\n```", "return a + b"),
    # nested helper stays nested; two-space answer re-indented to the file's four
    ("```python\ndef add(a, b):\n  def inner(x):\n    return x\n  return inner(a) + b\n```",
     "def inner(x):\n      return x\n    return inner(a) + b"),
    # top-level helper and import the body uses are moved into it; unused ones are not
    ("```python\nimport math\nimport os\n\ndef _twice(x):\n    return 2 * x\n\ndef unused():\n    pass\n\n"
     "def add(a, b):\n    return _twice(a) + math.floor(b)\n```",
     "import math\n    def _twice(x):\n        return 2 * x\n    return _twice(a) + math.floor(b)"),
    # a multi-line string's lines are its content: not re-indented
    ('```python\ndef add(a, b):\n        s = """x\ny"""\n        return a + b\n```', 's = """x\ny"""\n    return a + b'),
])
def test_body_extraction(answer, body):
    got = _body(answer)
    assert isinstance(got, fp.Extracted), got
    assert got.body == body


def test_body_extraction_of_a_method_and_refusals():
    answer = ("```python\nclass Other:\n    def area(self):\n        return 0\n\nclass Shape:\n"
              "    def area(self, r):\n        return 3 * r * r\n```")
    got = _body(answer, name="area", params=("self", "r"), class_name="Shape", indent="        ")
    assert got.body == "return 3 * r * r"
    assert "no function" in _body("```python\ndef sub(x, y, z):\n    return x\n```")
    assert "only a docstring" in _body('```python\ndef add(a, b):\n    """Add."""\n```')


@pytest.mark.parametrize("body, placeholder", [
    ("pass", True), ("...", True), ("raise NotImplementedError", True), ('raise NotImplementedError("later")', True),
    ("# TODO\n    pass", True), ('"""Only a string."""', True), ("", True),
    ("return a + b", False), ("# add\n    return a + b", False), ("if a:\n        pass\n    return b", False),
])
def test_placeholders(body, placeholder):
    assert fp.is_placeholder_body(body, PY) is placeholder


def test_placeholder_bodies_are_never_answers():
    eng = TestEngine(table={'numbers."""\n    ': "pass\n"})
    out = F.generate_function(_snap(ADD, ADD.index("add")), engine=eng, fim_format=QWEN25_CODER, mode="fim")
    assert not out.ok and "placeholder" in out.reason


# ---- modes ------------------------------------------------------------------------------------------------------


def test_strategies_for_modes():
    assert fp.strategies_for("fim", "qwen2.5-coder-0.5b", "python") == ("fim",)
    assert fp.strategies_for("chat+adapter", None, "python") == ("chat+adapter",)
    assert fp.strategies_for("auto", "qwen2.5-coder-0.5b", "python") == fp.AUTO_STRATEGIES["qwen2.5-coder-0.5b"]
    assert fp.strategies_for("auto", "/some/model.gguf", "python") == fp.AUTO_DEFAULT
    assert fp.strategies_for("chat", "qwen2.5-coder-0.5b", "c") == ("fim",)  # other languages: the body slot
    assert set(fp.MODES) == {"auto", "fim", "chat", "chat+adapter"}


def test_setting_and_its_warning():
    assert Settings().generate_function_mode == "auto"
    s, w = parse_settings({"generateFunctionMode": "chat"})
    assert s.generate_function_mode == "chat" and not w
    s2, w2 = parse_settings({"generateFunctionMode": "sometimes"}, s)
    assert s2.generate_function_mode == "chat"
    assert len(w2) == 1 and "generateFunctionMode" in w2[0] and "auto, fim, chat, chat+adapter" in w2[0]
    assert parse_settings(s.to_json())[0] == s


def test_chat_asks_the_base_model_and_chat_adapter_the_served_one():
    answer = 'def add(a: int, b: int) -> int:\n    return a + b\n```\nDone.'
    eng = TestEngine(table={'    """Add two numbers."""\n```': answer})
    out = F.generate_function(_snap(ADD, ADD.index("add")), engine=eng, fim_format=QWEN25_CODER, mode="chat")
    assert out.ok and out.strategy == "chat" and eng.last_adapter == BASE_ADAPTER
    assert ADD[:out.start] + out.new_text + ADD[out.end:] == ADD.replace("    pass\n", "    return a + b\n")
    assert eng.last_prompt.startswith("<|im_start|>user\n") and "from typing import List" in eng.last_prompt
    out2 = F.generate_function(_snap(ADD, ADD.index("add")), engine=eng, fim_format=QWEN25_CODER,
                               mode="chat+adapter")
    assert out2.ok and out2.strategy == "chat+adapter" and eng.last_adapter is None


def test_the_chat_answer_opens_with_the_functions_own_header_and_the_model_writes_the_body():
    eng = TestEngine(table={'    """Add two numbers."""\n```': "    return a + b\n```\nDone."})
    out = F.generate_function(_snap(ADD, ADD.index("add")), engine=eng, fim_format=QWEN25_CODER, mode="chat")
    head = ADD[ADD.index("def add"):ADD.index("    pass")]
    assert eng.last_prompt.endswith("```python\n" + head)
    assert out.ok and ADD[:out.start] + out.new_text + ADD[out.end:] == ADD.replace("    pass\n", "    return a + b\n")


def test_auto_falls_back_to_the_body_slot():
    eng = TestEngine(table={'    """Add two numbers."""\n```': "I cannot help with that.",
                            'numbers."""\n    ': "return a + b\n"})
    out = F.generate_function(_snap(ADD, ADD.index("add")), engine=eng, fim_format=QWEN25_CODER, mode="auto",
                              model="qwen2.5-coder-0.5b")
    assert out.ok and out.strategy == "fim", out
    assert out.attempts[0].startswith("chat: ") and out.attempts[1].startswith("fim: ")
    assert out.new_text == "\n    return a + b"


def test_candidates_can_be_sampled_one_by_one():
    eng = TestEngine(table={'numbers."""\n    ': "return a + b\n"})
    req = F.prepare_function(_snap(ADD, ADD.index("add")), engine=eng)
    assert isinstance(req, F.FunctionRequest) and req.target.name == "add"
    cand = F.generate_candidate(req, "fim", engine=eng, fim_format=QWEN25_CODER, temperature=0.8)
    assert cand.ok and cand.body == "return a + b" and cand.engine_called
    assert not F.generate_candidate(req, "beam", engine=eng, fim_format=QWEN25_CODER).ok


# ---- the session ------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_session_generates_with_the_chat_mode(test_engine_session):
    answer = "def area(r):\n    return 3.0 * r * r\n```"
    s = await test_engine_session({"generateFunctionMode": "chat",
                                   "test": {"table": {'    """Area of a circle."""\n```': answer}}})
    uri = "file:///w/circle.py"
    s.did_open(uri, "python", 1, 'def area(r):\n    """Area of a circle."""\n    pass\n')
    res = await s.generate_function(uri, 0, 5)
    assert res.ok, res.reason
    assert res.strategy == "chat" and res.new_text == "\n    return 3.0 * r * r"
    assert s.host.loaded.engine.last_adapter == BASE_ADAPTER
