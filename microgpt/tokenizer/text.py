"""Text as the tokenizer sees it: the UTF-8 bytes of a str.

Encoding (bpe.py) and training (train.py) both start here, so a text counts in training
exactly as it encodes. A str may hold lone surrogates ("\\ud800", from a broken UTF-16
source or surrogateescape decoding) that UTF-8 cannot encode; like tiktoken, each becomes
U+FFFD instead of an error.
"""


def utf8_bytes(text):
    """The UTF-8 bytes of `text`, lone surrogates replaced by U+FFFD."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Round-trip through UTF-16: surrogatepass keeps the lone surrogates as code units,
        # and decoding them with "replace" turns each unpaired one into U+FFFD.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
