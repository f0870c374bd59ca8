"""How sttm_bench decodes a request (``runners.lmms_model``): its generation arguments as lmms-eval's own models read
them, greedy decoding only."""

from __future__ import annotations

from dataclasses import dataclass

#: the generation arguments read from a request; greedy decoding only
GENERATION_ARGS = ("max_new_tokens", "until", "do_sample", "temperature", "top_p", "top_k", "num_beams")


@dataclass(frozen=True)
class Generation:
    """How one request is decoded: greedily, up to ``max_new_tokens``, the reply cut before the first of ``until``."""

    max_new_tokens: int
    until: tuple[str, ...] = ()

    def cut(self, reply: str) -> str:
        ends = [reply.index(stop) for stop in self.until if stop and stop in reply]
        return reply[: min(ends, default=len(reply))].strip()


def generation(gen_kwargs: dict | None, max_new_tokens: int) -> Generation:
    """A request's generation arguments (its task's ``generation_kwargs`` updated by ``--gen_kwargs``) as lmms-eval's
    own models read them: ``max_new_tokens`` (``max_new_tokens`` where the request gives none), ``until`` (a string or
    a list of them; lmms-eval gives a task without one ``["\\n\\n"]``), and greedy decoding. Sampling and beam search
    fail: every reducer's timing and the KV reuse assume one greedy sequence; ``temperature``, ``top_p`` and ``top_k``
    act only with ``do_sample``, as in ``transformers``."""
    gen_kwargs = gen_kwargs or {}
    unknown = sorted(set(gen_kwargs) - set(GENERATION_ARGS))
    if unknown:
        raise ValueError(f"generation arguments {unknown} are not supported; sttm_bench reads {list(GENERATION_ARGS)}")
    if gen_kwargs.get("do_sample") or int(gen_kwargs.get("num_beams", 1)) != 1:
        raise ValueError(
            "sttm_bench decodes greedily (one sequence, as the reducers' timing and the KV reuse assume): got "
            f"do_sample={gen_kwargs.get('do_sample')}, num_beams={gen_kwargs.get('num_beams')}"
        )
    until = gen_kwargs.get("until") or []
    return Generation(
        int(gen_kwargs.get("max_new_tokens", max_new_tokens)), (until,) if isinstance(until, str) else tuple(until)
    )
