"""ByteTokenizer: UTF-8 bytes plus pad/bos/eos, the offline tokenizer of the tiny decoders (TRM, baseline).

A byte vocabulary (259 ids) keeps the embedding and output head small, which is what lets a ~10M
parameter decoder exist at all (a 150k BPE vocabulary alone would be 38M parameters at width 256).
"""

from __future__ import annotations


class ByteTokenizer:
    """Ids 0..255 are bytes; 256 pad, 257 bos, 258 eos."""

    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of text, no special tokens."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Text up to the first eos; pad and bos are dropped, broken UTF-8 is replaced."""
        out = bytearray()
        for i in ids:
            if i == self.eos_id:
                break
            if i < 256:
                out.append(i)
        return out.decode("utf-8", errors="replace")

    def prompt_ids(self, question: str) -> list[int]:
        """bos, the question, then a newline that marks where the answer starts."""
        return [self.bos_id] + self.encode(question) + self.encode("\n")

    def answer_ids(self, answer: str) -> list[int]:
        """The answer followed by eos, so the model learns to stop."""
        return self.encode(answer) + [self.eos_id]
