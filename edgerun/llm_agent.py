"""The on-device LLM agent: the tool selector picks the tools a question needs, the split LLM calls one.

The device keeps a tool index (``edgerun tools build``) and the front half of a split LLM
(``edgerun llm export``). For a question it keeps the few tools the selector's rule allows, writes
them into the system prompt, and lets the split LLM generate the call after the opening
``<tool_call>[{"name": "`` (SmolLM2-135M does not start a tool call in a given format by itself).
Fewer tools mean fewer prompt positions: fewer hidden states on the link and less prefill work on
the server.

Example:
    >>> agent = Agent(LlmDevice("bundles/llm", url), ToolSelector(ToolIndex.load("bundles/tools")))  # doctest: +SKIP
    >>> a = agent.ask("What's the weather like in Oslo tomorrow?")                                    # doctest: +SKIP
    >>> a.tool, a.prompt_positions, a.selection.names                                                 # doctest: +SKIP
    ('weather.forecast', 212, ['weather.forecast', 'weather.now'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgerun.errors import ConfigError
from edgerun.llm_device import Generation, LlmDevice
from edgerun.tools import Selection, ToolSelector

SYSTEM = ("You are an expert in composing functions. You are given a question and a set of possible functions. "
          "Based on the question, you will need to make one function call to achieve the purpose.\n"
          "You have access to the following tools:\n<tools>{tools}</tools>\n\n"
          "The output MUST strictly adhere to the following format, and NO other text MUST be included.\n"
          '<tool_call>[{{"name": "func_name", "arguments": {{"argument1": "value1"}}}}]</tool_call>')
ANSWER_PREFIX = '<tool_call>[{"name": "'
CALL_END = "</tool_call>"  # generation stops once the call is closed


def prompt_parts(tools: list[dict[str, Any]]) -> tuple[str, str]:
    """The chat text before and after the question, ``tools`` offered, ending where the tool's name starts."""
    return ("<|im_start|>system\n" + SYSTEM.format(tools=json.dumps(tools, ensure_ascii=False)) + "<|im_end|>\n"
            "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n" + ANSWER_PREFIX)


def prompt_ids(tokenizer: Any, question: str, tools: list[dict[str, Any]]) -> list[int]:
    """The token ids of the chat for one question with ``tools`` offered, ending where the tool's name
    starts; the question is taken literally (``Tokenizer.encode_turn``)."""
    before, after = prompt_parts(tools)
    return tokenizer.encode_turn(before, question, after)


@dataclass
class Answer:
    """What the agent offered, what the LLM generated, and the tool it called (None: not an offered one)."""

    selection: Selection
    offered: list[str]
    prompt_positions: int
    generation: Generation
    call: str           # the generated call, the prefix included
    tool: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.selection.query, "kept": self.selection.names, "offered": self.offered,
                "prompt_positions": self.prompt_positions, "call": self.call, "tool": self.tool,
                "bytes_up": self.generation.bytes_up, "bytes_down": self.generation.bytes_down,
                "prefill_ms": self.generation.steps[0].front_ms + self.generation.steps[0].rtt_ms,
                "replays": self.generation.replays}


class Agent:
    """Tool selection on the device + a split LLM: ``ask(question)`` returns the tool call it made."""

    def __init__(self, device: LlmDevice, selector: ToolSelector) -> None:
        self.device, self.selector = device, selector

    def ask(self, question: str, *, max_new_tokens: int = 48, offer_all: bool = False, temperature: float = 0.0,
            seed: int | None = None) -> Answer:
        """Select the question's tools (``offer_all``: offer the whole catalog instead, as a plain
        agent would) and generate the call.

        Raises:
            ConfigError: an empty or non-UTF-8 question, or a prompt past the LLM bundle's context
                (offer fewer tools).
            TransportError: no server worker answered.
        """
        sel = self.selector.select(question)
        offered = self.selector.index.tools if offer_all else sel.tools
        ids = prompt_ids(self.device.tokenizer, question, offered)
        context = self.device.bundle.spec.max_context
        if isinstance(max_new_tokens, int) and len(ids) + max_new_tokens - 1 > context:
            alone = len(prompt_ids(self.device.tokenizer, question, []))
            what = ("shorten the question" if alone + max_new_tokens - 1 > context else
                    "offer fewer tools (--k-max)")  # no tool at all would not fit either: fewer tools cannot help
            raise ConfigError(f"the question with {len(offered)} tools' schemas takes {len(ids)} positions (+ "
                              f"{max_new_tokens} new tokens), past the LLM bundle's context of {context}: {what}, "
                              "ask for fewer new tokens (--max-new-tokens) or export the LLM with a larger "
                              "--max-context")
        g = self.device.generate(ids=ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                 stop=CALL_END)
        name = g.text.split('"', 1)[0]
        names = [t["name"] for t in offered]
        return Answer(sel, names, len(ids), g, ANSWER_PREFIX + g.text, name if name in names else None)
