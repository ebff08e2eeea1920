"""README.md and its Chinese translation README.zh-CN.md stay in step: they link to each other,
have the same sections and table rows, the same commands in their code blocks (comments may be
translated) and the same inline code (flags, file names, messages, test names). Their file table
(Contents) names every top-level module and package, and only paths that exist.

When this fails after an edit of one README, the message lists what the other one lacks."""
import re
from pathlib import Path
from typing import List, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
ENGLISH, CHINESE = REPO / 'README.md', REPO / 'README.zh-CN.md'
FENCE = re.compile(r'^```([^\n`]*)\n(.*?)^```$', re.S | re.M)
# Blocks in these languages are compared without their comments, which a translation may change.
COMMENTED = {'bash', 'sh', 'shell', 'python'}


def _without_comment(line: str) -> str:
    """`line` up to a '#' comment that starts the line or follows a space, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch == '#' and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def code_blocks(text: str) -> List[str]:
    """The fenced blocks of a markdown text, in order, as '<language>\\n<commands>'."""
    blocks = []
    for lang, body in FENCE.findall(text):
        lines = body.splitlines()
        if lang.strip() in COMMENTED:
            lines = [_without_comment(line) for line in lines]
        blocks.append(lang.strip() + '\n' + '\n'.join(line for line in lines if line.strip()))
    return blocks


def prose(text: str) -> str:
    return FENCE.sub('', text)


def headings(text: str) -> List[str]:
    """The heading levels in order ('##', '###', ...)."""
    return [line.split()[0] for line in prose(text).splitlines() if re.match(r'#{1,6} ', line)]


def table_rows(text: str) -> List[int]:
    """The number of rows of each table, in order."""
    counts, in_table = [], False
    for line in prose(text).splitlines():
        if line.startswith('|'):
            if not in_table:
                counts.append(0)
            counts[-1] += 1
        in_table = line.startswith('|')
    return counts


def inline_code(text: str) -> set:
    return set(re.findall(r'`([^`\n]+)`', prose(text)))


@pytest.fixture(scope='module')
def readmes() -> Tuple[str, str]:
    return ENGLISH.read_text(encoding='utf-8'), CHINESE.read_text(encoding='utf-8')


def test_each_readme_links_the_other_at_the_top(readmes):
    english, chinese = (text.splitlines()[:5] for text in readmes)
    assert any('(README.zh-CN.md)' in line for line in english)
    assert any('(README.md)' in line for line in chinese)


def test_same_commands_in_the_same_order(readmes):
    english, chinese = (code_blocks(text) for text in readmes)
    only_english = [b for b in english if b not in chinese]
    only_chinese = [b for b in chinese if b not in english]
    assert not only_english, 'README.zh-CN.md lacks these code blocks of README.md:\n\n' + '\n\n'.join(only_english)
    assert not only_chinese, 'README.md lacks these code blocks of README.zh-CN.md:\n\n' + '\n\n'.join(only_chinese)
    assert english == chinese, 'the code blocks are the same but in another order'
    assert len(english) >= 10  # the parser found the blocks


def test_same_sections_tables_and_inline_code(readmes):
    english, chinese = readmes
    assert headings(english) == headings(chinese)
    assert table_rows(english) == table_rows(chinese)
    only_english, only_chinese = inline_code(english) - inline_code(chinese), inline_code(chinese) - inline_code(english)
    assert not only_english, f'README.zh-CN.md lacks inline code of README.md: {sorted(only_english)}'
    assert not only_chinese, f'README.md lacks inline code of README.zh-CN.md: {sorted(only_chinese)}'


def test_comment_stripping_keeps_commands():
    assert _without_comment('bash run_demo.sh     # set up .venv') == 'bash run_demo.sh'
    assert _without_comment("print(f'#{n}')  # count") == "print(f'#{n}')"
    assert _without_comment('# a whole comment line') == ''
    assert _without_comment('git log --format=%h#x') == 'git log --format=%h#x'
    assert code_blocks('```bash\na  # one\n# two\nb\n```\n') == ['bash\na\nb']


# The header row of the file table (section Contents) in each README.
FILE_TABLE_HEADERS = ('| path | what |', '| 路径 | 内容 |')


def file_table_paths(text: str) -> List[str]:
    """The paths in the first column of the README's file table, e.g. 'training/', 'test/*.sh'."""
    lines = prose(text).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() in FILE_TABLE_HEADERS)
    paths = []
    for line in lines[start + 2:]:  # past the header and the |---| row
        if not line.startswith('|'):
            break
        paths += re.findall(r'`([^`]+)`', line.split('|')[1])
    return paths


def test_the_file_table_lists_every_top_level_module_and_only_real_paths(readmes):
    packages = {p.parent.name for p in REPO.glob('*/__init__.py') if p.parent.name != 'tests'}
    modules = {p.name for p in REPO.glob('*.py')}
    assert {'training', 'deploy', 'utils'} <= packages and 'yolact.py' in modules  # the globs found the tree
    for name, text in zip(('README.md', 'README.zh-CN.md'), readmes):
        paths = file_table_paths(text)
        missing = sorted(m for m in modules if m not in paths)
        missing += sorted(p + '/' for p in packages if not any(path.startswith(p + '/') for path in paths))
        assert not missing, f'{name}: the file table lacks {missing}'
        unknown = [path for path in paths if not any(REPO.glob(path.rstrip('/')))]
        assert not unknown, f'{name}: the file table lists paths that do not exist: {unknown}'


def test_file_table_paths_reads_the_first_column_only():
    text = '| path | what |\n|---|---|\n| `a.py`, `b/` | uses `c.py` |\n| `d/*.sh` | x |\n\n| `e.py` | y |\n'
    assert file_table_paths(text) == ['a.py', 'b/', 'd/*.sh']
