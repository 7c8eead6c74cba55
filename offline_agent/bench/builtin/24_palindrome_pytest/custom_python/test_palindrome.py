from palindrome import is_palindrome


def test_simple_words():
    assert is_palindrome("level")
    assert not is_palindrome("agent")


def test_ignores_case_and_spaces():
    assert is_palindrome("Never odd or even")


def test_empty_text():
    assert is_palindrome("")
