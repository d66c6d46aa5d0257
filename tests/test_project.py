"""The project's wiring: CI calls the README's test command; installs pin torch; README comes from index.ipynb."""
from configparser import ConfigParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    assert 'make test' in readme and 'make demo' in readme
    ci = [l.strip() for l in (ROOT / '.ci/run').read_text().splitlines() if l.strip() and not l.startswith('#')]
    assert ci[-1] == 'make test'


def test_constraints_pin_torch_and_torchvision_and_make_uses_them():
    pins = {l.strip() for l in (ROOT / 'constraints.txt').read_text().splitlines() if l.strip() and not l.startswith('#')}
    assert pins == {'torch==2.13.0', 'torchvision==0.28.0', 'pytest<9.2'}      # pytest 9.2 breaks xdist's loadgroup (see the file)
    mk = (ROOT / 'Makefile').read_text()
    assert '-c constraints.txt' in mk and 'torch==2.13.0' in mk


def test_settings_keep_papermill_tags_and_nbdev2_pins():
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    d = cfg['DEFAULT']
    assert d['allowed_cell_metadata_keys'].split() == ['tags']
    assert set(d['tst_flags'].split()) >= {'slow', 'cuda'}
    dev = d['dev_requirements'].split()
    assert {'nbdev==2.4.14', 'fastcore==1.14.5', 'execnb==0.1.18'} <= set(dev)


def test_readme_is_generated_from_index_notebook(tmp_path):
    from dctkd.tools.readme import readme_markdown
    assert readme_markdown(ROOT / 'nbs' / 'index.ipynb', ROOT) == (ROOT / 'README.md').read_text()


def test_nbdev_clean_keeps_papermill_parameters_tag(tmp_path):
    import json, shutil, subprocess, sys
    from pathlib import Path as P
    shutil.copy(ROOT / 'settings.ini', tmp_path / 'settings.ini')
    (tmp_path / 'nbs').mkdir()
    nb = {'cells': [{'cell_type': 'code', 'execution_count': 3, 'id': 'a1', 'outputs': [],
                     'metadata': {'tags': ['parameters'], 'scrolled': True}, 'source': ['lr = 0.1']}],
          'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'},
                       'language_info': {'name': 'python', 'version': '3.11'}}, 'nbformat': 4, 'nbformat_minor': 5}
    f = tmp_path / 'nbs' / 'run.ipynb'
    f.write_text(json.dumps(nb))
    clean = P(sys.executable).parent / 'nbdev_clean'
    subprocess.run([str(clean), '--fname', str(f)], cwd=tmp_path, check=True, capture_output=True)
    cell = json.loads(f.read_text())['cells'][0]
    assert cell['metadata'] == {'tags': ['parameters']}       # the tag survives, other cell metadata goes
    assert cell['execution_count'] is None


def test_readme_images_resolve_from_the_repository_root():
    import re
    links = re.findall(r'!\[[^\]]*\]\(([^)\s]+)\)', (ROOT / 'README.md').read_text())
    assert len(links) >= 2, 'the README shows the quickstart figures'
    for u in links:
        assert not u.startswith('images/'), f'{u}: not rebased to the README folder'
        assert (ROOT / u).is_file(), f'README image {u} does not exist'


def test_readme_lists_every_notebook_method_and_cifar_net():
    "The README's 'What is here' table names every library notebook, and the overview every method (by title) and CIFAR net."
    import re
    from dctkd.distillers import method, names
    from dctkd.models import CIFAR_ARCHS
    readme = (ROOT / 'README.md').read_text()
    table = readme.split('## What is here', 1)[1].split('\n\n', 2)[1]
    rows = set(re.findall(r'^\| `([^`]+)`', table, flags=re.M))
    nbs = {p.stem for p in (ROOT / 'nbs').glob('[0-9]*.ipynb')}
    assert nbs and not nbs - rows, f'notebooks missing from the README table: {sorted(nbs - rows)}'
    missing = [method(n).title for n in names() if n != 'none' and not n.endswith('+kd') and method(n).title.split(' (')[0] not in table]
    assert not missing, f'methods missing from the README table: {missing}'
    short = {a.removeprefix('resnet') for a in CIFAR_ARCHS if a.startswith('resnet')} | {a for a in CIFAR_ARCHS if a.startswith('wrn')}
    assert all(f'`{s}`' in table or f'`resnet{s}`' in table for s in short), short
