"""Tool-call syntaxes on exact strings (swiftinfer_core/conversation/tool_syntax.py),
and the syntax read from what a chat template writes (ChatFormat)."""

from __future__ import annotations

from pathlib import Path

import pytest

from swiftinfer_core.conversation.tool_syntax import JsonCall, ParsedReply, TaggedCalls, ToolCall, syntax_of

ARGS = '{"city": "Caf\\u00e9 \\"x\\"", "n": [1, 2.5e3]}'  # escapes kept as written, not re-dumped
CALL = '{"name": "get_weather", "arguments": ' + ARGS + "}"
TEMPLATE = Path(__file__).with_name("chatml_tools.jinja")


def test_a_bare_call_parses_to_its_exact_argument_text_and_back():
    assert JsonCall().parse(CALL, ["get_weather"]) == ParsedReply(None, (ToolCall("get_weather", ARGS),))
    assert JsonCall().call_text(ToolCall("get_weather", ARGS)) == CALL
    assert JsonCall().parse('{"name": "f", "arguments": {}}').calls == (ToolCall("f", "{}"),)


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "arguments": {"city": "Par',  # cut by max_tokens
    '{"name": "other", "arguments": {}}',  # not one of the tools
    '{"name":"get_weather","arguments":{}}',  # not the grammar's spacing: not what the model wrote under it
    '{"name": "get_weather", "arguments": {}, "x": 1}',
    '{"name": "get_weather", "arguments": "{}"}',  # arguments must be an object
    '[{"name": "get_weather", "arguments": {}}]',
    "plain words",
])
def test_anything_but_a_whole_bare_call_stays_text(text):
    assert JsonCall().parse(text, ["get_weather"]) == ParsedReply(text, ())


def test_tagged_calls_parse_with_the_text_before_them():
    one = "<tool_call>\n" + CALL + "\n</tool_call>"
    two = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    syn = TaggedCalls()
    assert syn.parse(one) == ParsedReply(None, (ToolCall("get_weather", ARGS),))
    assert syn.parse("Let me check.\n" + one + "\n" + two, ["get_weather", "get_time"]) == ParsedReply(
        "Let me check.", (ToolCall("get_weather", ARGS), ToolCall("get_time", "{}")))
    assert syn.call_text(ToolCall("get_weather", ARGS)) == one
    assert syn.reply_text("Let me check.", [ToolCall("get_weather", ARGS), ToolCall("get_time", "{}")]) == "Let me check.\n" + one + "\n" + two


@pytest.mark.parametrize("text", [
    "no call at all",
    "<tool_call>\n" + CALL,  # never closed (max_tokens)
    "<tool_call>\n" + CALL + "\n</tool_call> and then more words",  # text after a call
    "<tool_call>\n" + CALL + "\n</tool_call>\nbetween\n<tool_call>\n" + CALL + "\n</tool_call>",  # text between calls
    '<tool_call>\n{"name": "other", "arguments": {}}\n</tool_call>',  # not one of the tools
    "<tool_call>\n{not json}\n</tool_call>",
    "<tool_call>" + CALL + "</tool_call>",  # not the template's newlines
])
def test_anything_but_text_then_whole_tagged_calls_stays_text(text):
    assert TaggedCalls().parse(text, ["get_weather"]) == ParsedReply(text, ())


def test_the_syntax_is_read_from_what_the_template_writes(base_model):
    from swiftinfer_core.conversation.chat_format import ChatFormat

    assert syntax_of('<|im_start|>assistant\n<tool_call>\n{"name": "swiftinfer_probe", "arguments": {"x": 1}}\n</tool_call><|im_end|>\n') == TaggedCalls()
    assert syntax_of('<|im_start|>assistant\n[TOOL_CALLS] [{"name": "swiftinfer_probe"}]<|im_end|>') is None  # not one parsed here
    tok = base_model.tokenizer
    assert ChatFormat(tok).tool_syntax is None  # SmolLM2's own template has no tools
    assert ChatFormat(tok, template=TEMPLATE.read_text()).tool_syntax == TaggedCalls()
