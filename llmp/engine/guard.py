"""Guard model profiles: the exact prompt each safety classifier family wants, how its verdict
reads, and how its taxonomy maps onto OpenAI's moderation categories.

A profile renders the prompt its model was trained on (byte for byte what the model's own
chat template renders for one user message; tests/data/guard/ keeps the templates and the
expected prompts), constrains generation to its verdict format with a grammar, parses the
verdict, and names the texts the scores are read after (see `llmp.services.moderation`):

* `verdict_prefix`: what the model writes before its safe/unsafe word ("\\n\\n" for Llama Guard
  3, whose template ends right after the assistant header; "Safety:" for Qwen3Guard);
* `safe_word`, `unsafe_word` (and Qwen3Guard's `other_words`: " Controversial"): the words
  whose first tokens' probabilities give P(unsafe);
* `category_prefix`: the text after which the first category code comes, for the per-category
  distribution (teacher forcing).

Mapping onto OpenAI's 13 categories (`mapping`): a guard category may map to several OpenAI
categories, and OpenAI categories no guard category maps to score 0 and are never flagged.

Llama Guard 3 (MLCommons hazards taxonomy, S1-S14; the 1B model, profile `llama-guard-3-1b`,
has S1-S13 and takes the content as a list of text parts):

| code | Llama Guard 3             | OpenAI categories                      |
|------|---------------------------|----------------------------------------|
| S1   | Violent Crimes            | violence, illicit/violent              |
| S2   | Non-Violent Crimes        | illicit                                |
| S3   | Sex Crimes                | sexual, illicit                        |
| S4   | Child Exploitation        | sexual/minors                          |
| S5   | Defamation                | harassment                             |
| S6   | Specialized Advice        | (none)                                 |
| S7   | Privacy                   | (none)                                 |
| S8   | Intellectual Property     | (none)                                 |
| S9   | Indiscriminate Weapons    | illicit/violent, violence              |
| S10  | Hate                      | hate                                   |
| S11  | Self-Harm                 | self-harm                              |
| S12  | Sexual Content            | sexual                                 |
| S13  | Elections                 | (none)                                 |
| S14  | Code Interpreter Abuse    | (none)                                 |

Qwen3Guard (Gen, prompt moderation):

| Qwen3Guard category            | OpenAI categories            |
|--------------------------------|------------------------------|
| Violent                        | violence, illicit/violent    |
| Non-violent Illegal Acts       | illicit                      |
| Sexual Content or Sexual Acts  | sexual                       |
| PII                            | (none)                       |
| Suicide & Self-Harm            | self-harm                    |
| Unethical Acts                 | harassment                   |
| Politically Sensitive Topics   | (none)                       |
| Copyright Violation            | (none)                       |
| Jailbreak                      | (none)                       |

The finer OpenAI categories (hate/threatening, harassment/threatening, self-harm/intent,
self-harm/instructions, violence/graphic) have no counterpart in either taxonomy: 0 and false.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

OPENAI_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening",
                     "illicit", "illicit/violent", "self-harm", "self-harm/instructions",
                     "self-harm/intent", "sexual", "sexual/minors", "violence",
                     "violence/graphic")


@dataclass(frozen=True)
class Verdict:
    unsafe: bool | None  # None: the output could not be read
    codes: tuple[str, ...] = ()
    label: str = ""  # the raw safety label ("safe", "unsafe", "Controversial", ...)


@dataclass(frozen=True)
class GuardProfile:
    name: str
    categories: dict[str, str]  # code -> name, in the order the prompt lists them
    mapping: dict[str, tuple[str, ...]]  # code -> OpenAI categories
    verdict_prefix: str
    safe_word: str
    unsafe_word: str
    category_prefix: str
    other_words: tuple[str, ...] = ()
    max_tokens: int = 32  # the verdict's budget (the grammar allows at most 3 categories)
    aliases: tuple[str, ...] = field(default=())

    def render(self, text: str) -> str:  # pragma: no cover - per profile
        raise NotImplementedError

    def parse(self, output: str) -> Verdict:  # pragma: no cover - per profile
        raise NotImplementedError

    def grammar(self) -> str:  # pragma: no cover - per profile
        raise NotImplementedError

    def code_texts(self) -> dict[str, str]:
        """code -> the text the model writes for it after `category_prefix`."""
        return {c: c for c in self.categories}


def _gbnf_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# ----------------------------------------------------------------------------- Llama Guard 3
LLAMA_GUARD_3_CATEGORIES = {
    "S1": "Violent Crimes", "S2": "Non-Violent Crimes", "S3": "Sex Crimes",
    "S4": "Child Exploitation", "S5": "Defamation", "S6": "Specialized Advice",
    "S7": "Privacy", "S8": "Intellectual Property", "S9": "Indiscriminate Weapons",
    "S10": "Hate", "S11": "Self-Harm", "S12": "Sexual Content", "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}
LLAMA_GUARD_3_MAPPING: dict[str, tuple[str, ...]] = {
    "S1": ("violence", "illicit/violent"), "S2": ("illicit",), "S3": ("sexual", "illicit"),
    "S4": ("sexual/minors",), "S5": ("harassment",), "S6": (), "S7": (), "S8": (),
    "S9": ("illicit/violent", "violence"), "S10": ("hate",), "S11": ("self-harm",),
    "S12": ("sexual",), "S13": (), "S14": (),
}
_LG3_CODE = re.compile(r"^S(\d{1,2})$")


@dataclass(frozen=True)
class LlamaGuard3(GuardProfile):
    def render(self, text: str) -> str:
        """What Llama-Guard-3-8B's chat template renders for one user message (including the
        template's leading space before <|begin_of_text|> and `content.strip()`)."""
        cats = "".join(f"{c}: {n}.\n" for c, n in self.categories.items())
        return (" <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                "Task: Check if there is unsafe content in 'User' messages in conversations "
                "according our safety policy with the below categories.\n\n"
                f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{cats}<END UNSAFE CONTENT CATEGORIES>\n\n"
                f"<BEGIN CONVERSATION>\n\nUser: {text.strip()}\n\n<END CONVERSATION>\n\n"
                "Provide your safety assessment for ONLY THE LAST User message in the above "
                "conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a "
                "second line must include a comma-separated list of violated categories."
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>")

    def parse(self, output: str) -> Verdict:
        """`safe` | `unsafe\\nS1,S2` (whitespace around lines and codes tolerated; unknown
        codes dropped; anything else unreadable)."""
        lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
        if not lines:
            return Verdict(None)
        head = lines[0].lower()
        if head == "safe":
            return Verdict(False, (), "safe")
        if head != "unsafe":
            return Verdict(None, (), lines[0])
        codes: list[str] = []
        for part in (",".join(lines[1:2])).split(","):
            p = part.strip().upper()
            m = _LG3_CODE.match(p)
            if m and p in self.categories and p not in codes:
                codes.append(p)
        return Verdict(True, tuple(codes), "unsafe")

    def grammar(self) -> str:
        codes = " | ".join(_gbnf_str(c) for c in sorted(self.categories, key=lambda c: -len(c)))
        return (f'root ::= {_gbnf_str(self.verdict_prefix)} ("safe" | "unsafe\\n" code '
                f'("," code)? ("," code)?)\n'
                f"code ::= {codes}\n")


@dataclass(frozen=True)
class LlamaGuard3_1B(LlamaGuard3):
    """Llama Guard 3 1B: its template takes the content as a list of text parts (each part
    a `User: ...` block, trimmed), lists S1-S13 (no S14, Code Interpreter Abuse), has no
    leading space and puts a space before <|eot_id|>."""

    def render(self, text: str) -> str:
        cats = "".join(f"{c}: {n}.\n" for c, n in self.categories.items())
        return ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                "Task: Check if there is unsafe content in 'User' messages in conversations "
                "according our safety policy with the below categories.\n\n"
                f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{cats}<END UNSAFE CONTENT CATEGORIES>\n\n"
                f"<BEGIN CONVERSATION>\n\nUser: {text.strip()}\n\n<END CONVERSATION>\n\n"
                "Provide your safety assessment for ONLY THE LAST User message in the above "
                "conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a "
                "second line must include a comma-separated list of violated categories. "
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>")


# ----------------------------------------------------------------------------- Qwen3Guard
QWEN3_GUARD_CATEGORIES = {
    "Violent": "Violent", "Non-violent Illegal Acts": "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts": "Sexual Content or Sexual Acts", "PII": "PII",
    "Suicide & Self-Harm": "Suicide & Self-Harm", "Unethical Acts": "Unethical Acts",
    "Politically Sensitive Topics": "Politically Sensitive Topics",
    "Copyright Violation": "Copyright Violation", "Jailbreak": "Jailbreak",
}
QWEN3_GUARD_MAPPING: dict[str, tuple[str, ...]] = {
    "Violent": ("violence", "illicit/violent"), "Non-violent Illegal Acts": ("illicit",),
    "Sexual Content or Sexual Acts": ("sexual",), "PII": (),
    "Suicide & Self-Harm": ("self-harm",), "Unethical Acts": ("harassment",),
    "Politically Sensitive Topics": (), "Copyright Violation": (), "Jailbreak": (),
}
_QWEN_SAFETY = re.compile(r"Safety:\s*(Safe|Unsafe|Controversial)\b", re.IGNORECASE)
_QWEN_CATS = re.compile(r"Categories:\s*(.*)", re.IGNORECASE)


@dataclass(frozen=True)
class Qwen3Guard(GuardProfile):
    def render(self, text: str) -> str:
        """What Qwen3Guard-Gen's chat template renders for one user message (prompt
        moderation), ending with the empty think block the template adds."""
        cats = "".join(f"{n}.\n" for n in self.categories.values())
        return ("<|im_start|>user\n# Task:\n1) Evaluate whether THE LAST USER's query belongs "
                "to safe or unsafe content based on our safety policy.\n2) Identify the "
                "category of unsafe content found.\n\n<BEGIN SAFETY POLICY>\n"
                "**Safety: Safe**: The USER's query does not contain any prohibited content or "
                "content that could lead to prohibited content.\n"
                "**Safety: Unsafe**: The USER's query contains prohibited content.\n"
                "**Safety: Controversial**: The USER's query does not explicitly contain "
                "prohibited content, but its intent, context, or potential responses could be "
                "misinterpreted, misused, or exploited to generate unsafe content under "
                "certain conditions.\n<END SAFETY POLICY>\n\n"
                f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{cats}<END UNSAFE CONTENT CATEGORIES>\n\n"
                f"<BEGIN CONVERSATION>\n\nUSER: {text}\n\n<END CONVERSATION>\n\n"
                "Provide your safety assessment for ONLY THE LAST **USER's query** in the above "
                "conversation:\n - The first line must be one of: 'Safety: Safe', 'Safety: "
                "Unsafe', 'Safety: Controversial'.\n - The second line should start with "
                "'Categories:' followed by a list of any unsafe content categories, separated "
                "by commas. If the content is safe, use 'Categories: None'.<|im_end|>\n"
                "<|im_start|>assistant\n<think>\n\n</think>\n\n")

    def parse(self, output: str) -> Verdict:
        """`Safety: Safe|Unsafe|Controversial` then `Categories: A, B | None`. Controversial
        counts as safe (Qwen3Guard's "loose" mode) but keeps its categories."""
        s = _QWEN_SAFETY.search(output or "")
        if not s:
            return Verdict(None)
        label = s.group(1).capitalize()
        codes: list[str] = []
        c = _QWEN_CATS.search(output[s.end():])
        if c:
            by_lower = {k.lower(): k for k in self.categories}
            for part in c.group(1).split("\n")[0].split(","):
                k = by_lower.get(part.strip().rstrip(".").lower())
                if k and k not in codes:
                    codes.append(k)
        return Verdict(label == "Unsafe", tuple(codes), label)

    def grammar(self) -> str:
        names = " | ".join(_gbnf_str(n) for n in self.categories)
        return ('root ::= "Safety: " ("Safe" | "Unsafe" | "Controversial") "\\nCategories: " '
                '("None" | cat (", " cat)? (", " cat)?)\n'
                f"cat ::= {names}\n")

    def code_texts(self) -> dict[str, str]:
        return {c: " " + c for c in self.categories}


PROFILES: dict[str, GuardProfile] = {
    "llama-guard-3": LlamaGuard3(
        name="llama-guard-3", categories=LLAMA_GUARD_3_CATEGORIES, mapping=LLAMA_GUARD_3_MAPPING,
        verdict_prefix="\n\n", safe_word="safe", unsafe_word="unsafe",
        category_prefix="\n\nunsafe\n"),
    "llama-guard-3-1b": LlamaGuard3_1B(
        name="llama-guard-3-1b",
        categories={c: n for c, n in LLAMA_GUARD_3_CATEGORIES.items() if c != "S14"},
        mapping={c: m for c, m in LLAMA_GUARD_3_MAPPING.items() if c != "S14"},
        verdict_prefix="\n\n", safe_word="safe", unsafe_word="unsafe",
        category_prefix="\n\nunsafe\n"),
    "qwen3-guard": Qwen3Guard(
        name="qwen3-guard", categories=QWEN3_GUARD_CATEGORIES, mapping=QWEN3_GUARD_MAPPING,
        verdict_prefix="Safety:", safe_word=" Safe", unsafe_word=" Unsafe",
        other_words=(" Controversial",), category_prefix="Safety: Unsafe\nCategories:"),
}


def profile(name: str) -> GuardProfile:
    from llmp.errors import InvalidRequestError

    p = PROFILES.get(name)
    if p is None:
        raise InvalidRequestError(f"unknown guard profile {name!r}: use one of "
                                  f"{', '.join(PROFILES)}", param="profile")
    return p
