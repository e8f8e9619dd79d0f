from stentor.data import clean_text


def test_nfkc_folds_ligatures_fullwidth_and_superscripts():
    assert clean_text("ﬁne ﬂow") == "fine flow"
    assert clean_text("ＡＢＣ１２３！") == "ABC123!"
    assert clean_text("x² ½") == "x2 1⁄2"


def test_crlf_blank_lines_and_indentation_become_single_spaces():
    assert clean_text("  first line \r\n\r\n\tsecond\tline\r\n   \r\nthird  ") == "first line second line third"


def test_whitespace_inside_lines_collapses():
    assert clean_text("a \t  b\u3000c\u00a0d") == "a b c d"


def test_empty_and_whitespace_only_documents_become_empty():
    assert clean_text("") == ""
    assert clean_text(" \n\t\r\n ") == ""


def test_unicode_line_separators_split_lines():
    assert clean_text("one\u2028two\x0bthree\x85four") == "one two three four"
