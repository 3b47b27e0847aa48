"""Chat prompts: a conversation rendered with the tokenizer's chat template.

SmolLM2's ChatML template injects the system prompt ``"You are a helpful AI assistant
named SmolLM, trained by Hugging Face"`` when a conversation does not start with a system
message. Pass your own ``{"role": "system", ...}`` message first to replace it; nothing
here adds or removes system messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from big5_dagster.lib.engine.types import Conversation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _check_conversation(conversation: Any, index: int) -> list[dict[str, str]]:
    if isinstance(conversation, str | bytes) or not isinstance(conversation, Sequence):
        raise ValueError(
            f"conversation {index}: expected a list of {{'role', 'content'}} messages, "
            f"got {type(conversation).__name__}"
        )
    if not conversation:
        raise ValueError(f"conversation {index}: has no messages")
    messages = []
    for j, message in enumerate(conversation):
        if not isinstance(message, Mapping):
            raise ValueError(
                f"conversation {index}, message {j}: expected a mapping, got {type(message).__name__}"
            )
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ValueError(
                    f"conversation {index}, message {j}: field {key!r} must be a string, "
                    f"got {message.get(key)!r}"
                )
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    conversation: Conversation,
    *,
    add_generation_prompt: bool = True,
    index: int = 0,
) -> str:
    """The prompt text of a conversation under the tokenizer's chat template.

    With SmolLM2 a default system prompt is injected unless the first message is a system one.
    Tokenize the result with ``add_special_tokens=False`` (the template already holds them).
    """
    messages = _check_conversation(conversation, index)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
