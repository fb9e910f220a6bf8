"""One signature per kernel in every language: backends/reference.py, csrc/microgpt.h and
cuda/microgpt_cuda.h name the same arguments in the same order, with one size type.

The rule that maps a reference kernel onto C and CUDA (the only rule; checked below):

    A contract kernel  f(p1, ..., pk) -> (r1, ..., rj)   (its line in backends/__init__.py
    KERNELS; the parameter names are reference.py's) is declared in C and CUDA as f with
      1. the outputs r1 ... rj first, as the pointers the kernel writes (none for "-> None";
         arrays updated in place, like AdamW's param, m and v, stay where the reference has them);
      2. then the language's extras, if it has any (EXTRAS below, each with its reason);
      3. then the parameters p1 ... pk, same names, same order: an array becomes a pointer to
         its data, a scalar stays a value. Left out are the parameters that only restate what a
         pointer or a size already says: has_bias (the bias gradient pointer is NULL without
         a bias), num_embeddings (the size V) and num_tokens (the size N);
      4. last the sizes, int64_t and named from the size legend (SIZES), then any int flags.
    A rung f_v<k>_<what> (one step of a ladder of implementations, as matmul_forward_v1_naive)
    has f's arguments exactly; the production f may be an alias of its best rung.

What is checked:
  - a name declared in both headers has one argument list there (types, names, order), the
    extras aside; return types may differ (C kernels return void, CUDA launchers an error code);
  - every contract kernel declared in a header follows the rule, and every rung its kernel;
  - one size type: every size argument is int64_t, and no declaration uses long;
  - the definitions in csrc/*.c and cuda/*.cu spell the header's parameter names (a compiler
    checks the types against the header, not the names);
  - tests/cuda_mock.py has a method for every CUDA declaration, with the same argument names.
matmul_forward/backward are the one exception to the rule (not to the other checks): the
contract's broadcast batch axes, while the headers offer the 2-D product op(a) @ op(b) + bias
that the bindings compose them from.
"""
import glob
import inspect
import os
import re

import pytest

import cuda_mock
from microgpt.backends import KERNELS, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADERS = {"c": os.path.join(ROOT, "csrc", "microgpt.h"), "cuda": os.path.join(ROOT, "cuda", "microgpt_cuda.h")}
SOURCES = {"c": sorted(glob.glob(os.path.join(ROOT, "csrc", "*.c"))),
           "cuda": sorted(glob.glob(os.path.join(ROOT, "cuda", "*.cu")))}
CDEF = {"c": (r"/\* BEGIN CDEF \*/", r"/\* END CDEF \*/"), "cuda": (r"/\* CDEF BEGIN \*/", r"/\* CDEF END \*/")}

# Arguments one language adds to a kernel, and why the other does without them.
EXTRAS = {
    "c": {"work": "scratch the binding allocates (C kernels never allocate)",
          "work_len": "its length, checked by the kernel against what it needs"},
    "cuda": {"bad": "a device flag set on an out-of-range index: checking ids on the host would synchronize",
             "delta": "scratch for attention's D_i = dout_i . out_i (the C kernel keeps it on the stack)"},
}
# Reference parameters that only restate a pointer or a size (rule item 3).
RESTATED = {"has_bias", "num_embeddings", "num_tokens"}
# The size legend of both headers: every one of these is an int64_t.
SIZES = {"N", "C", "OC", "V", "B", "T", "NH", "NKV", "HS", "Tq", "Tk", "BNH", "M", "K", "n", "batch",
         "stride_out", "stride_a", "stride_b", "work_len", "outer", "R", "inner", "rows", "width", "n_ids",
         "NB", "BS", "MB", "E"}
NOT_BY_THE_RULE = {"matmul_forward", "matmul_backward"}
RUNG = re.compile(r"^(\w+?)_v\d+_\w+$")


def _strip_comments(text):
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def _arguments(text):
    """[(type, name)] of a C parameter list ("void" or empty: no arguments)."""
    text = " ".join(text.split())
    if text in ("", "void"):
        return []
    args = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(.*?)\s*\b(\w+)\s*", part)
        assert match, f"cannot read the parameter {part!r}"
        kind = re.sub(r"\s*\*\s*", "* ", match.group(1)).replace("restrict", "").strip()
        args.append((" ".join(kind.split()), match.group(2)))
    return args


def declarations(language):
    """{name: (return type, [(type, name), ...])} of a header's CDEF block."""
    with open(HEADERS[language]) as f:
        text = f.read()
    begin, end = CDEF[language]
    block = _strip_comments(re.search(begin + "(.*)" + end, text, re.S).group(1))
    # type declarations are not kernels: decode_step.c's structs (typedef struct { ... } name;)
    # and their enum of linear kinds; no brace sits in a function declaration
    block = re.sub(r"typedef\s+struct\s*\{[^{}]*\}\s*\w+\s*;|enum\s*\{[^{}]*\}\s*;", "", block)
    assert "{" not in block and "}" not in block, f"{HEADERS[language]}: a type declaration the reader does not know"
    found = {}
    for decl in block.split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        match = re.fullmatch(r"(.*?)\b(\w+)\s*\((.*)\)", decl)
        assert match, f"{HEADERS[language]}: cannot read the declaration {decl!r}"
        assert match.group(2) not in found, f"{match.group(2)} is declared twice"
        found[match.group(2)] = (match.group(1).strip(), _arguments(match.group(3)))
    return found


DECLARED = {language: declarations(language) for language in HEADERS}


def names(args):
    return [name for _, name in args]


def without_extras(language, args):
    return [(kind, name) for kind, name in args if name not in EXTRAS[language]]


def contract(kernel):
    """(outputs, parameters) of a contract kernel: the names after -> and reference.py's own."""
    returned = KERNELS[kernel][0].split("->", 1)[1].strip()
    outputs = [] if returned == "None" else [r.strip() for r in returned.strip("()").split(",")]
    return outputs, list(inspect.signature(getattr(reference, kernel)).parameters)


def kernel_of(name):
    match = RUNG.match(name)
    return match.group(1) if match else name


def implementations(language):
    """(function, contract kernel) for every declaration of a contract kernel or of its rung."""
    return [(name, kernel_of(name)) for name in DECLARED[language]
            if kernel_of(name) in KERNELS and kernel_of(name) not in NOT_BY_THE_RULE]


def test_the_headers_are_read():
    for language, found in DECLARED.items():
        assert "softmax_forward" in found and "adamw_update" in found, language
    assert names(DECLARED["c"]["rms_norm_forward"][1])[:2] == ["out", "rstd"]


@pytest.mark.parametrize("name", sorted(set(DECLARED["c"]) & set(DECLARED["cuda"])))
def test_a_name_in_both_headers_has_one_argument_list(name):
    c_args = without_extras("c", DECLARED["c"][name][1])
    cuda_args = without_extras("cuda", DECLARED["cuda"][name][1])
    assert c_args == cuda_args, f"{name}:\n  C    {c_args}\n  CUDA {cuda_args}"


@pytest.mark.parametrize("language,function,kernel",
                         [(lang, fn, k) for lang in HEADERS for fn, k in implementations(lang)])
def test_every_kernel_follows_the_reference(language, function, kernel):
    outputs, params = contract(kernel)
    inputs = [p for p in params if p not in RESTATED]
    args = DECLARED[language][function][1]
    got = names(args)
    assert got[:len(outputs)] == outputs, f"{function}: outputs {got[:len(outputs)]}, reference returns {outputs}"
    rest = args[len(outputs):]
    extras = [name for _, name in rest[:len(EXTRAS[language])] if name in EXTRAS[language]]
    rest = rest[len(extras):]
    assert not [n for n in names(rest) if n in EXTRAS[language]], f"{function}: extras belong right after the outputs"
    assert names(rest[:len(inputs)]) == inputs, \
        f"{function}: inputs {names(rest[:len(inputs)])}, the reference has {inputs}"
    for kind, name in rest[len(inputs):]:
        assert (kind == "int64_t" and name in SIZES) or kind == "int", \
            f"{function}: {kind} {name} after the inputs is neither an int64_t size nor an int flag"


def test_every_rung_has_its_kernels_arguments():
    for language, found in DECLARED.items():
        ladders = {}
        for name in found:
            ladders.setdefault(kernel_of(name), []).append(name)
        for kernel, members in ladders.items():
            if len(members) < 2:
                continue
            first = without_extras(language, found[members[0]][1])
            for other in members[1:]:
                assert without_extras(language, found[other][1]) == first, \
                    f"{language}: {other} and {members[0]} are rungs of {kernel} with different arguments"


def test_one_size_type():
    for language, found in DECLARED.items():
        for name, (returns, args) in found.items():
            assert "long" not in returns.split(), f"{language} {name} returns long; sizes are int64_t"
            for kind, arg in args:
                assert "long" not in kind.split(), f"{language} {name}: {kind} {arg}; sizes are int64_t"
                if arg in SIZES:      # a size, or an array of them (a stride per axis)
                    assert kind in ("int64_t", "const int64_t*"), f"{language} {name}: size {arg} is {kind}"


def definitions(language):
    """{name: (path, [parameter names])} of the functions the sources define."""
    found = {}
    for path in SOURCES[language]:
        with open(path) as f:
            text = _strip_comments(f.read())
        plain = r"\b(?:void|int|int64_t|long|char\s*\*)\s+\**\s*(\w+)\s*\(([^;{}()]*)\)\s*\{"
        by_macro = r"\bMG_POINTWISE\((\w+),\s*\(([^()]*)\)"       # activation.cu's one-line launchers
        for match in [*re.finditer(plain, text), *re.finditer(by_macro, text)]:
            found.setdefault(match.group(1), (path, names(_arguments(match.group(2)))))
    return found


@pytest.mark.parametrize("language", sorted(HEADERS))
def test_definitions_spell_the_headers_names(language):
    defined = definitions(language)
    for name, (_, args) in DECLARED[language].items():
        if name in defined:
            path, got = defined[name]
            assert got == names(args), f"{os.path.relpath(path, ROOT)} {name}{tuple(got)}; header: {tuple(names(args))}"


def test_the_cuda_mock_has_every_launcher_with_the_headers_names():
    for name, (_, args) in DECLARED["cuda"].items():
        method = getattr(cuda_mock.MockLib, name, None)
        assert method is not None, f"tests/cuda_mock.py has no {name}"
        got = list(inspect.signature(method).parameters)[1:]
        assert got == names(args), f"cuda_mock.MockLib.{name}{tuple(got)}; header: {tuple(names(args))}"
