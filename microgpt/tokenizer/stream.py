"""StreamDecoder: ids -> text one id at a time, for printing tokens as they are generated.

A token may end in the middle of a UTF-8 character (byte-level BPE splits an emoji's four
bytes across tokens freely). Decoding each token alone would print U+FFFD for each piece;
instead the decoder keeps the bytes of an incomplete character until the rest arrives.
Bytes that can never become valid UTF-8 still become U+FFFD at once, so the text streamed
so far plus flush() equals tok.decode(all ids). Python's incremental UTF-8 decoder does
exactly this bookkeeping; this class feeds it token bytes.

    dec = StreamDecoder(tok)
    for i in generate(...):
        print(dec.feed(i), end="", flush=True)
    print(dec.flush())
"""
import codecs


class StreamDecoder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id):
        """Append one id; return the text it completes ('' while a character is pending)."""
        return self._utf8.decode(self.tokenizer.decode_bytes([token_id]))

    def flush(self):
        """End of stream: whatever is still held back comes out (as U+FFFD if incomplete)."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
