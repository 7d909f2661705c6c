"""The FAQ as typed, immutable objects: what `faq.yaml` in the flow directory loads into.

    faq:
      - id: delivery_time              # [a-z][a-z0-9_]{0,39}, unique
        title: 多久发货                  # what the customer sees when the bot offers it as a choice
        questions:                      # ways customers ask it (at least 4 for a good model; each used once)
          - 多久发货
          - 几天能到
          - 下单后什么时候发
          - 发货要多久啊
        answer: 下单后 48 小时内发货…    # the text sent (at most 2048 bytes, WeChat's limit)
        links: [{title: 物流说明, url: "https://shop.example/shipping"}]   # optional, as in a say step
        miniprogram: {appid: wx123, pagepath: pages/ship, title: 物流}     # optional
        tags: [问物流]                   # optional: tags to add (from tags.yaml)
        set_stage: interested           # optional: a stage to move to
        handoff_if_repeated: 10m        # optional: asked again within this time → a person takes over

Entries become retrieval intents (`faq/<id>`) of Rasa's ResponseSelector in the same model as the
intents; the answers come from the published release, never from the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.events import LinkCard, MiniProgramCard

FAQ_FILE = "faq.yaml"


@dataclass(frozen=True)
class FaqEntry:
    id: str
    title: str
    questions: tuple[str, ...]
    answer: str
    links: tuple[LinkCard, ...] = ()
    miniprogram: MiniProgramCard | None = None
    tags: tuple[str, ...] = ()
    set_stage: str = ""
    handoff_if_repeated_s: int = 0  # 0: never
    line: int = 0


@dataclass(frozen=True)
class FaqBook:
    """Every entry of one release, by id, in file order."""

    entries: dict[str, FaqEntry] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def get(self, entry_id: str) -> FaqEntry | None:
        return self.entries.get(entry_id)

    def training_rows(self) -> tuple[tuple[str, tuple[str, ...], str], ...]:
        """(id, questions, answer) of each entry: what the NLU layer trains on (it cannot import flows)."""
        return tuple((entry.id, entry.questions, entry.answer) for entry in self.entries.values())
