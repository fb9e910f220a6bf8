"""The Porter stemmer (Porter 1980, "An algorithm for suffix stripping"), in the variant
rouge-score stems with: NLTK's PorterStemmer in its default NLTK_EXTENSIONS mode.

    stem("generalizations") -> "gener"      stem("running") -> "run"

Terms. A letter is a consonant unless it is a, e, i, o, u, or a y after a consonant. Any
word is [C](VC)^m[V] for runs C of consonants and V of vowels; m is its *measure*. The
conditions of the rules: m > 0, m > 1, *v* (the stem has a vowel), *d (ends in a double
consonant), *o (ends consonant-vowel-consonant, the last not w, x or y).

A rule list is tried in order; the first suffix the word ends with decides, whether its
condition holds (the suffix is replaced) or not (the word is left as it is).

What NLTK_EXTENSIONS changes from the 1980 paper (each marked below as "extension"):
  - a table of irregular forms (skies -> sky, dying -> die, news -> news, ...);
  - words of at most 2 letters are returned as they are;
  - step 1a: a 4-letter word in "ies" becomes "ie" (ties -> tie); step 1b: "ied" likewise,
    and a longer "ied" -> "i";
  - step 1c: y -> i only after a consonant that is not the first letter (cry -> cri, but
    say and by stay);
  - step 2: "alli" -> "al" first (then step 2 again), "bli" -> "ble" (the paper's "abli"),
    "fulli" -> "ful", "logi" -> "log";
  - *o also holds for a 2-letter vowel-consonant stem.
"""

_VOWELS = frozenset("aeiou")

_IRREGULAR = {"sky": ("sky", "skies"), "die": ("dying",), "lie": ("lying",), "tie": ("tying",),
              "news": ("news",), "inning": ("innings", "inning"),
              "outing": ("outings", "outing"), "canning": ("cannings", "canning"),
              "howe": ("howe",), "proceed": ("proceed",), "exceed": ("exceed",),
              "succeed": ("succeed",)}
_POOL = {form: base for base, forms in _IRREGULAR.items() for form in forms}


def _consonants(word):
    """One flag per letter: True for a consonant (a y is one after a vowel or at the start)."""
    flags = []
    for i, ch in enumerate(word):
        if ch in _VOWELS:
            flags.append(False)
        elif ch == "y":
            flags.append(True if i == 0 else not flags[i - 1])
        else:
            flags.append(True)
    return flags


def measure(stem):
    """m in [C](VC)^m[V]: the number of vowel-to-consonant changes."""
    flags = _consonants(stem)
    return sum(1 for a, b in zip(flags, flags[1:]) if not a and b)


def _has_vowel(stem):
    return not all(_consonants(stem))


def _double_consonant(word):
    return len(word) >= 2 and word[-1] == word[-2] and _consonants(word)[-1]


def _cvc(word):
    flags = _consonants(word)
    if len(word) >= 3 and flags[-3] and not flags[-2] and flags[-1] and word[-1] not in "wxy":
        return True
    return len(word) == 2 and not flags[0] and flags[1]          # extension


def _m_positive(stem):
    return measure(stem) > 0


def _m_above_1(stem):
    return measure(stem) > 1


def _apply(word, rules):
    """The first rule whose suffix ends `word` decides; "*d" is a double consonant."""
    for suffix, replacement, condition in rules:
        if suffix == "*d":
            if _double_consonant(word):
                stem = word[:-2]
                return stem + replacement if condition is None or condition(stem) else word
            continue
        if word.endswith(suffix):
            stem = word[:len(word) - len(suffix)]
            return stem + replacement if condition is None or condition(stem) else word
    return word


def _step1a(word):
    if word.endswith("ies") and len(word) == 4:                  # extension
        return word[:-3] + "ie"
    return _apply(word, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None),
                         ("s", "", None)])


def _step1b(word):
    if word.endswith("ied"):                                      # extension
        return word[:-3] + ("ie" if len(word) == 4 else "i")
    if word.endswith("eed"):
        stem = word[:-3]
        return stem + "ee" if measure(stem) > 0 else word
    for suffix in ("ed", "ing"):
        if word.endswith(suffix) and _has_vowel(word[:-len(suffix)]):
            stem = word[:-len(suffix)]
            break
    else:
        return word
    return _apply(stem, [("at", "ate", None), ("bl", "ble", None), ("iz", "ize", None),
                         ("*d", stem[-1], lambda s: stem[-1] not in "lsz"),
                         ("", "e", lambda s: measure(s) == 1 and _cvc(s))])


def _step1c(word):
    return _apply(word, [("y", "i", lambda s: len(s) > 1 and _consonants(s)[-1])])   # extension


_STEP2 = [("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"),
          ("izer", "ize"), ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"),
          ("ousli", "ous"), ("ization", "ize"), ("ation", "ate"), ("ator", "ate"),
          ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous"),
          ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"), ("fulli", "ful")]


def _step2(word):
    if word.endswith("alli") and _m_positive(word[:-4]):           # extension
        return _step2(word[:-4] + "al")
    rules = [(s, r, _m_positive) for s, r in _STEP2]
    rules.append(("logi", "log", lambda s: _m_positive(word[:-3])))    # extension: m of "...l"
    return _apply(word, rules)


def _step3(word):
    return _apply(word, [(s, r, _m_positive) for s, r in (
        ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
        ("ful", ""), ("ness", ""))])


_STEP4 = ("al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent",
          "ion", "ou", "ism", "ate", "iti", "ous", "ive", "ize")


def _step4(word):
    rules = []
    for suffix in _STEP4:
        if suffix == "ion":                                       # (m > 1 and (*s or *t))
            rules.append((suffix, "", lambda s: measure(s) > 1 and s[-1] in "st"))
        else:
            rules.append((suffix, "", _m_above_1))
    return _apply(word, rules)


def _step5a(word):
    if word.endswith("e"):
        stem = word[:-1]
        m = measure(stem)
        if m > 1 or (m == 1 and not _cvc(stem)):
            return stem
    return word


def _step5b(word):
    return _apply(word, [("ll", "l", lambda s: measure(word[:-1]) > 1)])


def stem(word: str) -> str:
    word = word.lower()
    if word in _POOL:                                             # extension
        return _POOL[word]
    if len(word) <= 2:                                            # extension
        return word
    for step in (_step1a, _step1b, _step1c, _step2, _step3, _step4, _step5a, _step5b):
        word = step(word)
    return word
