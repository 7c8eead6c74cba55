"""Chat templates of the model families users run, written for these tests.

None is a copy of a published template: each is written here to behave as its family's does
in what matters to the agent (its special tokens and turn layout, what it does with a system
message, its generation prompt, and what it calls or reads: `raise_exception`,
`strftime_now`, loop controls, `tools`, `add_generation_prompt`, `bos_token`, `namespace`).
Each says which behaviours it reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

from offline_agent.llm.chat_format import ThinkStart


@dataclass(frozen=True)
class Family:
    """A family's chat template and what the agent's prompt must look like with it."""

    name: str
    models: str
    """The published models whose templates behave this way."""
    template: str
    bos: str
    eos: str
    system: str
    """What the template does with a system message (the table in docs/models.md)."""
    format: str
    """The name of the chat format the agent settles on (`ChatFormat.name`)."""
    generation: str
    """How the rendered prompt ends: the generation prompt, or the last user turn's end
    where the family has none."""
    grows: bool = True
    """Whether a step's prompt starts with the whole previous prompt (only the new part is
    evaluated; see `LlamaModel._splice`)."""
    think: ThinkStart = "never"
    """Where a reply starts with thinking off (the default)."""


# Llama 3.1, 3.2, 3.3: the date from strftime_now when it exists (a fixed one otherwise),
# a system header always written (knowledge cutoff, date, then the system text, trimmed),
# `tools` defaulted to none and, when given, put into the first user turn (raising when
# there is none), one tool call at most (raise_exception), every content trimmed.
LLAMA3 = r"""
{{- bos_token }}
{%- if tools is not defined %}{%- set tools = none %}{%- endif %}
{%- if tools_in_user_message is not defined %}{%- set tools_in_user_message = true %}{%- endif %}
{%- if date_string is not defined %}
    {%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}{%- set date_string = "1 Jan 2025" %}{%- endif %}
{%- endif %}
{%- if messages[0].role == "system" %}
    {%- set system_text = messages[0].content | trim %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set system_text = "" %}
    {%- set turns = messages %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}{{- "Environment: ipython\n" }}{%- endif %}
{{- "Cutting Knowledge Date: December 2023\nToday Date: " + date_string + "\n\n" }}
{{- system_text + "<|eot_id|>" }}
{%- if tools_in_user_message and tools is not none %}
    {%- if turns | length == 0 %}
        {{- raise_exception("tools need a first user message to go in") }}
    {%- endif %}
    {{- "<|start_header_id|>user<|end_header_id|>\n\nFunctions you may call:\n\n" }}
    {%- for tool in tools %}{{- tool | tojson(indent=4) + "\n\n" }}{%- endfor %}
    {{- turns[0].content | trim + "<|eot_id|>" }}
    {%- set turns = turns[1:] %}
{%- endif %}
{%- for message in turns %}
    {%- if message.role in ["ipython", "tool"] %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" + message.content | trim }}
        {{- "<|eot_id|>" }}
    {%- elif message.tool_calls %}
        {%- if message.tool_calls | length != 1 %}
            {{- raise_exception("one tool call at a time") }}
        {%- endif %}
        {%- set call = message.tool_calls[0].function %}
        {{- "<|start_header_id|>assistant<|end_header_id|>\n\n" }}
        {{- '{"name": "' + call.name + '", "parameters": ' + call.arguments | tojson + "}" }}
        {{- "<|eot_id|>" }}
    {%- else %}
        {{- "<|start_header_id|>" + message.role + "<|end_header_id|>\n\n" }}
        {{- message.content | trim + "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- "<|start_header_id|>assistant<|end_header_id|>\n\n" }}
{%- endif %}
"""

# Qwen 2.5 (and ChatML instruction models in general): a default system turn when there is
# none, `tools` listed in the system turn, consecutive tool results grouped in one user
# turn (loop.index0 and a look at the neighbouring messages).
QWEN25 = r"""
{%- set default_system = "You are Qwen, a helpful assistant." %}
{%- if tools %}
    {{- "<|im_start|>system\n" }}
    {%- if messages[0].role == "system" %}{{- messages[0].content }}
    {%- else %}{{- default_system }}{%- endif %}
    {{- "\n\n# Tools\n\n<tools>" }}
    {%- for tool in tools %}{{- "\n" + tool | tojson }}{%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- elif messages[0].role == "system" %}
    {{- "<|im_start|>system\n" + messages[0].content + "<|im_end|>\n" }}
{%- else %}
    {{- "<|im_start|>system\n" + default_system + "<|im_end|>\n" }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first)
          or (message.role == "assistant" and not message.tool_calls) %}
        {{- "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n" }}
    {%- elif message.role == "assistant" %}
        {{- "<|im_start|>assistant\n" + (message.content or "") }}
        {%- for call in message.tool_calls %}
            {{- "\n<tool_call>\n" + call.function | tojson + "\n</tool_call>" }}
        {%- endfor %}
        {{- "<|im_end|>\n" }}
    {%- elif message.role == "tool" %}
        {%- if loop.index0 == 0 or messages[loop.index0 - 1].role != "tool" %}
            {{- "<|im_start|>user" }}
        {%- endif %}
        {{- "\n<tool_response>\n" + message.content + "\n</tool_response>" }}
        {%- if loop.last or messages[loop.index0 + 1].role != "tool" %}
            {{- "<|im_end|>\n" }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|im_start|>assistant\n" }}{%- endif %}
"""

# Qwen3: ChatML; the last real user query found by walking the messages backwards
# (messages[::-1], a namespace); an assistant turn's thinking dropped unless it follows that
# query; `enable_thinking` false closes an empty think block in the generation prompt.
QWEN3 = r"""
{%- if messages[0].role == "system" %}
    {{- "<|im_start|>system\n" + messages[0].content }}
    {%- if tools %}
        {{- "\n\n# Tools\n\n<tools>" }}
        {%- for tool in tools %}{{- "\n" + tool | tojson }}{%- endfor %}
        {{- "\n</tools>" }}
    {%- endif %}
    {{- "<|im_end|>\n" }}
{%- endif %}
{%- set ns = namespace(looking=true, last_query=messages | length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages | length - 1) - loop.index0 %}
    {%- if ns.looking and message.role == "user" and message.content is string
          and not message.content.startswith("<tool_response>") %}
        {%- set ns.looking = false %}
        {%- set ns.last_query = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else "" %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- "<|im_start|>" + message.role + "\n" + content + "<|im_end|>\n" }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning = "" %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning = message.reasoning_content %}
        {%- elif "</think>" in content %}
            {%- set reasoning = content.split("</think>")[0].split("<think>")[-1].strip("\n") %}
            {%- set content = content.split("</think>")[-1].lstrip("\n") %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}
            {{- "<|im_start|>assistant\n<think>\n" + reasoning + "\n</think>\n\n" + content }}
        {%- else %}
            {{- "<|im_start|>assistant\n" + content }}
        {%- endif %}
        {{- "<|im_end|>\n" }}
    {%- elif message.role == "tool" %}
        {{- "<|im_start|>user\n<tool_response>\n" + content + "\n</tool_response><|im_end|>\n" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- "<|im_start|>assistant\n" }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- "<think>\n\n</think>\n\n" }}
    {%- endif %}
{%- endif %}
"""

# Mistral-7B-Instruct v0.1 and v0.2 (and Llama 2's [INST] layout): strictly alternating
# user and assistant turns, any other role or order refused with raise_exception, so a
# system message is refused; no generation prompt (the prompt ends with [/INST]).
MISTRAL = r"""
{{- bos_token }}
{%- for message in messages %}
    {%- if (message.role == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("turns must go user, assistant, user, assistant...") }}
    {%- endif %}
    {%- if message.role == "user" %}
        {{- "[INST] " + message.content + " [/INST]" }}
    {%- elif message.role == "assistant" %}
        {{- message.content + eos_token }}
    {%- else %}
        {{- raise_exception("roles are user and assistant only") }}
    {%- endif %}
{%- endfor %}
"""

# Mistral-7B-Instruct v0.3 and Mistral Nemo: the system message goes into the *last* user
# turn (so it moves every step); user and assistant turns must alternate (tool turns aside);
# `tools` listed just before that last turn; no generation prompt.
MISTRAL_V3 = r"""
{%- if messages[0].role == "system" %}
    {%- set system_message = messages[0].content %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set turns = messages %}
{%- endif %}
{%- if tools is not defined %}{%- set tools = none %}{%- endif %}
{%- set ns = namespace(index=0) %}
{%- for message in turns %}
    {%- if message.role in ["user", "assistant"] %}
        {%- if (message.role == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("after a system message, user and assistant must alternate") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in turns %}
    {%- if message.role == "user" %}
        {%- if loop.last and tools is not none %}
            {{- "[AVAILABLE_TOOLS] " + tools | tojson + "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message.content + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message.content + "[/INST]" }}
        {%- endif %}
    {%- elif message.role == "assistant" %}
        {{- " " + message.content + eos_token }}
    {%- elif message.role == "tool" %}
        {{- "[TOOL_RESULTS] " + message.content + "[/TOOL_RESULTS]" }}
    {%- else %}
        {{- raise_exception("roles are system, user, assistant and tool") }}
    {%- endif %}
{%- endfor %}
"""

# Mixtral-8x7B-Instruct v0.1 (and other [INST] templates that fold the system message
# themselves): the system text heads the first user turn; turns must alternate; no
# generation prompt.
MIXTRAL = r"""
{%- if messages[0].role == "system" %}
    {%- set system_message = messages[0].content %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set turns = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in turns %}
    {%- if (message.role == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("turns must go user, assistant, user, assistant...") }}
    {%- endif %}
    {%- if message.role == "user" %}
        {%- if loop.first and system_message is defined %}
            {{- " [INST] " + system_message + "\n\n" + message.content + " [/INST]" }}
        {%- else %}
            {{- " [INST] " + message.content + " [/INST]" }}
        {%- endif %}
    {%- elif message.role == "assistant" %}
        {{- " " + message.content + eos_token }}
    {%- else %}
        {{- raise_exception("only a first system message, then user and assistant") }}
    {%- endif %}
{%- endfor %}
"""

# Phi-3-mini (the first release): a system message silently left out; every user turn is
# followed by the assistant's header whether or not a reply comes (add_generation_prompt
# is not read).
PHI3 = r"""
{{- bos_token }}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- "<|user|>\n" + message.content + "<|end|>\n<|assistant|>\n" }}
    {%- elif message.role == "assistant" %}
        {{- message.content + "<|end|>\n" }}
    {%- endif %}
{%- endfor %}
"""

# Phi-3.5-mini and Phi-4-mini: a system turn only when it has text, `tools` inside it
# between <|tool|> tags; the end-of-text token instead of a generation prompt when
# add_generation_prompt is false.
PHI4_MINI = r"""
{%- for message in messages %}
    {%- if message.role == "system" and message.content %}
        {{- "<|system|>" + message.content }}
        {%- if tools %}{{- "<|tool|>" + tools | tojson + "<|/tool|>" }}{%- endif %}
        {{- "<|end|>" }}
    {%- elif message.role in ["user", "assistant", "tool"] %}
        {{- "<|" + message.role + "|>" + message.content + "<|end|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|assistant|>" }}{%- else %}{{- eos_token }}{%- endif %}
"""

# Phi-4 (14B): ChatML with <|im_sep|> after the role and no newlines; other roles left out.
PHI4 = r"""
{%- for message in messages %}
    {%- if message.role in ["system", "user", "assistant"] %}
        {{- "<|im_start|>" + message.role + "<|im_sep|>" + message.content + "<|im_end|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|im_start|>assistant<|im_sep|>" }}{%- endif %}
"""

# Gemma 2: bos_token written by the template, a system message refused with
# raise_exception, strict alternation, the assistant called "model", contents trimmed.
GEMMA2 = r"""
{{- bos_token }}
{%- if messages[0].role == "system" %}
    {{- raise_exception("this model has no system role") }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("turns must go user, model, user, model...") }}
    {%- endif %}
    {%- set role = "model" if message.role == "assistant" else message.role %}
    {{- "<start_of_turn>" + role + "\n" + message.content | trim + "<end_of_turn>\n" }}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<start_of_turn>model\n" }}{%- endif %}
"""

# Gemma 3: the system text folded into the first user turn by the template itself, contents
# a string or a list of parts, strict alternation, contents trimmed.
GEMMA3 = r"""
{{- bos_token }}
{%- if messages[0].role == "system" %}
    {%- if messages[0].content is string %}
        {%- set first_user_prefix = messages[0].content + "\n\n" %}
    {%- else %}
        {%- set first_user_prefix = messages[0].content[0].text + "\n\n" %}
    {%- endif %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set first_user_prefix = "" %}
    {%- set turns = messages %}
{%- endif %}
{%- for message in turns %}
    {%- if (message.role == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("turns must go user, model, user, model...") }}
    {%- endif %}
    {%- set role = "model" if message.role == "assistant" else message.role %}
    {{- "<start_of_turn>" + role + "\n" + (first_user_prefix if loop.first else "") }}
    {%- if message.content is string %}
        {{- message.content | trim }}
    {%- else %}
        {%- for part in message.content %}
            {%- if part.type == "text" %}{{- part.text | trim }}
            {%- elif part.type == "image" %}{{- "<start_of_image>" }}{%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- "<end_of_turn>\n" }}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<start_of_turn>model\n" }}{%- endif %}
"""

# The DeepSeek-R1 distills (Qwen and Llama based): every system message gathered in a
# namespace (the last one wins) and written bare after bos_token; an assistant turn keeps
# only what follows </think>; the generation prompt opens a think block.
DEEPSEEK_R1 = r"""
{%- if add_generation_prompt is not defined %}{%- set add_generation_prompt = false %}{%- endif %}
{%- set ns = namespace(system="", in_tool=false) %}
{%- for message in messages %}
    {%- if message.role == "system" %}{%- set ns.system = message.content %}{%- endif %}
{%- endfor %}
{{- bos_token + ns.system }}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {%- set ns.in_tool = false %}
        {{- "<｜User｜>" + message.content }}
    {%- elif message.role == "assistant" and message.content is not none %}
        {%- set content = message.content %}
        {%- if "</think>" in content %}
            {%- set content = content.split("</think>")[-1] %}
        {%- endif %}
        {{- "<｜Assistant｜>" + content + "<｜end▁of▁sentence｜>" }}
    {%- elif message.role == "tool" %}
        {%- set ns.in_tool = true %}
        {{- "<｜tool▁output▁begin｜>" + message.content + "<｜tool▁output▁end｜>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt and not ns.in_tool %}{{- "<｜Assistant｜><think>\n" }}{%- endif %}
"""

# Granite 3.x: a default system text dated with strftime_now when there is none (3.3: a
# thinking instruction naming <think></think>, when `thinking` is true); `tools` aliased to
# `available_tools`; the generation prompt written inside the loop, after the last message.
GRANITE3 = r"""
{%- if tools and not available_tools %}{%- set available_tools = tools %}{%- endif %}
{%- if messages[0].role == "system" %}
    {%- set system_message = messages[0].content %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set system_message = "Knowledge Cutoff Date: April 2024.\nToday's Date: "
        + strftime_now("%B %d, %Y") + ".\nYou are Granite, developed by IBM." %}
    {%- if thinking %}
        {%- set system_message = system_message + " Think first, between <think></think>,"
            + " then answer between <response></response>." %}
    {%- endif %}
    {%- set turns = messages %}
{%- endif %}
{{- "<|start_of_role|>system<|end_of_role|>" + system_message + "<|end_of_text|>\n" }}
{%- if available_tools %}
    {{- "<|start_of_role|>available_tools<|end_of_role|>" }}
    {{- available_tools | tojson(indent=4) + "<|end_of_text|>\n" }}
{%- endif %}
{%- for message in turns %}
    {{- "<|start_of_role|>" + message.role + "<|end_of_role|>" + message.content }}
    {{- "<|end_of_text|>\n" }}
    {%- if loop.last and add_generation_prompt %}
        {{- "<|start_of_role|>assistant" }}
        {%- if controls %}{{- " " + controls | tojson }}{%- endif %}
        {{- "<|end_of_role|>" }}
    {%- endif %}
{%- endfor %}
"""

# SmolLM3: ChatML under a metadata header dated with strftime_now; the reasoning mode from
# `enable_thinking` or a /think or /no_think flag in the system message (taken out of the
# text); the system text as "custom instructions" unless /system_override; `xml_tools`;
# in no-think mode an empty think block in every assistant turn and in the generation prompt.
SMOLLM3 = r"""
{%- set reasoning_mode = "/think" %}
{%- if enable_thinking is defined and enable_thinking is false %}
    {%- set reasoning_mode = "/no_think" %}
{%- endif %}
{%- set system_message = "" %}
{%- set custom_instructions = "" %}
{%- if messages[0].role == "system" %}
    {%- set system_message = messages[0].content %}
    {%- if "/no_think" in system_message %}{%- set reasoning_mode = "/no_think" %}
    {%- elif "/think" in system_message %}{%- set reasoning_mode = "/think" %}{%- endif %}
    {%- set custom_instructions = system_message.replace("/no_think", "")
        .replace("/think", "").rstrip() %}
{%- endif %}
{{- "<|im_start|>system\n" }}
{%- if "/system_override" in system_message %}
    {{- custom_instructions.replace("/system_override", "").rstrip() }}
{%- else %}
    {{- "## Metadata\n\nKnowledge Cutoff Date: June 2025\nToday Date: " }}
    {{- strftime_now("%d %B %Y") + "\nReasoning Mode: " + reasoning_mode + "\n\n" }}
    {{- "## Custom Instructions\n\n" }}
    {%- if custom_instructions %}{{- custom_instructions + "\n\n" }}
    {%- else %}{{- "You are SmolLM, a helpful assistant.\n\n" }}{%- endif %}
    {%- if xml_tools %}
        {{- "## Tools\n\n<tools>" }}
        {%- for tool in xml_tools %}{{- "\n" + tool | tojson }}{%- endfor %}
        {{- "\n</tools>\n\n" }}
    {%- endif %}
{%- endif %}
{{- "<|im_end|>\n" }}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- "<|im_start|>user\n" + message.content + "<|im_end|>\n" }}
    {%- elif message.role == "assistant" %}
        {{- "<|im_start|>assistant\n" }}
        {%- if reasoning_mode == "/no_think" %}{{- "<think>\n\n</think>\n" }}{%- endif %}
        {{- message.content.lstrip("\n") + "<|im_end|>\n" }}
    {%- elif message.role == "tool" %}
        {{- "<|im_start|>user\n" + message.content + "<|im_end|>\n" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- "<|im_start|>assistant\n" }}
    {%- if reasoning_mode == "/no_think" %}{{- "<think>\n\n</think>\n" }}{%- endif %}
{%- endif %}
"""

# LFM2 (Liquid): bos_token, the system text in a namespace with `tools` appended as a list
# between special tokens, `messages` reassigned without the system message, a content that
# is not a string written as JSON, whitespace trimmed on both sides of every tag.
LFM2 = r"""
{{- bos_token -}}
{%- set ns = namespace(system="") -%}
{%- if messages[0].role == "system" -%}
    {%- set ns.system = messages[0].content -%}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- if tools -%}
    {%- set ns.system = ns.system + ("\n" if ns.system else "") -%}
    {%- set ns.system = ns.system + "List of tools: <|tool_list_start|>[" -%}
    {%- for tool in tools -%}
        {%- set ns.system = ns.system + (tool if tool is string else tool | tojson) -%}
        {%- if not loop.last -%}{%- set ns.system = ns.system + ", " -%}{%- endif -%}
    {%- endfor -%}
    {%- set ns.system = ns.system + "]<|tool_list_end|>" -%}
{%- endif -%}
{%- if ns.system -%}
    {{- "<|im_start|>system\n" + ns.system + "<|im_end|>\n" -}}
{%- endif -%}
{%- for message in messages -%}
    {{- "<|im_start|>" + message.role + "\n" -}}
    {%- set content = message.content if message.content is string else message.content | tojson -%}
    {%- if message.role == "tool" -%}
        {%- set content = "<|tool_response_start|>" + content + "<|tool_response_end|>" -%}
    {%- endif -%}
    {{- content + "<|im_end|>\n" -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- "<|im_start|>assistant\n" -}}{%- endif -%}
"""

# Command-R (c4ai-command-r v01 and plus): bos_token, a system turn of its own when there is
# a system message (`false` standing for none), strict alternation after it, contents
# trimmed, the chatbot's header as the generation prompt.
COMMAND_R = r"""
{{- bos_token }}
{%- if messages[0].role == "system" %}
    {%- set system_message = messages[0].content %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set system_message = false %}
    {%- set turns = messages %}
{%- endif %}
{%- if system_message != false %}
    {{- "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>" + system_message + "<|END_OF_TURN_TOKEN|>" }}
{%- endif %}
{%- for message in turns %}
    {%- if (message.role == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("turns must go user, chatbot, user, chatbot...") }}
    {%- endif %}
    {%- set token = "<|USER_TOKEN|>" if message.role == "user" else "<|CHATBOT_TOKEN|>" %}
    {{- "<|START_OF_TURN_TOKEN|>" + token + message.content | trim + "<|END_OF_TURN_TOKEN|>" }}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" }}{%- endif %}
"""

# Fine-tunes trained with assistant-only loss (TRL and others), published as GGUF with their
# training template: ChatML whose assistant text sits in a {% generation %} block, a tag
# Hugging Face's renderer knows and plain Jinja does not.
CHATML_SFT = r"""
{%- for message in messages %}
    {%- if message.role == "assistant" %}
        {{- "<|im_start|>assistant\n" }}
        {%- generation %}{{- message.content + "<|im_end|>" }}{%- endgeneration %}
        {{- "\n" }}
    {%- else %}
        {{- "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|im_start|>assistant\n" }}{%- endif %}
"""

_CHATML = ("<|im_start|>", "<|im_end|>")
_ASSISTANT = "<|im_start|>assistant\n"

FAMILIES = (
    Family("llama3", "Llama 3.1, 3.2, 3.3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>",
           "its own turn, under a dated header", "template",
           "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    Family("qwen2.5", "Qwen 2.5, ChatML models", QWEN25, "", "<|im_end|>",
           "its own turn (a default one when absent)", "template", _ASSISTANT),
    Family("qwen3", "Qwen3", QWEN3, "", "<|im_end|>", "its own turn", "template",
           _ASSISTANT + "<think>\n\n</think>\n\n", grows=False),
    Family("mistral", "Mistral 7B Instruct v0.1, v0.2", MISTRAL, "<s>", "</s>",
           "refused (raise_exception); turns must alternate",
           "template+folded-system+merged-turns", " [/INST]"),
    Family("mistral-v3", "Mistral 7B Instruct v0.3, Mistral Nemo", MISTRAL_V3, "<s>", "</s>",
           "put in the last user turn; turns must alternate", "template+merged-turns",
           "[/INST]", grows=False),
    Family("mixtral", "Mixtral 8x7B Instruct", MIXTRAL, "<s>", "</s>",
           "folded into the first user turn by the template; turns must alternate",
           "template+merged-turns", " [/INST]"),
    Family("phi3", "Phi-3-mini (first release)", PHI3, "<s>", "<|endoftext|>",
           "silently dropped", "template+folded-system", "<|end|>\n<|assistant|>\n"),
    Family("phi4-mini", "Phi-3.5-mini, Phi-4-mini", PHI4_MINI, "<s>", "<|endoftext|>",
           "its own turn", "template", "<|end|><|assistant|>"),
    Family("phi4", "Phi-4", PHI4, "", "<|im_end|>", "its own turn", "template",
           "<|im_start|>assistant<|im_sep|>"),
    Family("gemma2", "Gemma 2", GEMMA2, "<bos>", "<eos>",
           "refused (raise_exception); turns must alternate",
           "template+folded-system+merged-turns", "<start_of_turn>model\n"),
    Family("gemma3", "Gemma 3", GEMMA3, "<bos>", "<eos>",
           "folded into the first user turn by the template; turns must alternate",
           "template+merged-turns", "<start_of_turn>model\n"),
    Family("deepseek-r1", "DeepSeek-R1 distills (Qwen, Llama)", DEEPSEEK_R1,
           "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
           "bare text after BOS (the last one wins)", "template",
           "<｜Assistant｜><think>\n", grows=False, think="opened"),
    Family("granite3", "Granite 3.0 to 3.3", GRANITE3, "", "<|end_of_text|>",
           "its own turn (a dated default when absent)", "template",
           "<|start_of_role|>assistant<|end_of_role|>"),
    Family("smollm3", "SmolLM3", SMOLLM3, "", "<|im_end|>",
           "custom instructions under a dated metadata header", "template",
           _ASSISTANT + "<think>\n\n</think>\n"),
    Family("lfm2", "LFM2, LFM2.5", LFM2, "<|startoftext|>", "<|im_end|>", "its own turn",
           "template", _ASSISTANT),
    Family("command-r", "Command-R, Command-R+", COMMAND_R, "<BOS_TOKEN>",
           "<|END_OF_TURN_TOKEN|>", "its own turn; turns must alternate",
           "template+merged-turns", "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"),
    Family("chatml-sft", "fine-tunes with a {% generation %} training template", CHATML_SFT,
           "", "<|im_end|>", "its own turn", "template", _ASSISTANT),
)  # fmt: skip
