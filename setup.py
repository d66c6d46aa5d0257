"""Packaging for dctkd: every setting is read from settings.ini (nbdev 2 layout)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=['='])
cfg.read(here / 'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
lic = licenses[cfg['license']]
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable']
py_versions = ['3.10', '3.11', '3.12', '3.13']
min_python = cfg['min_python']
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
# every `extra_<name> = pkgs` line of settings.ini is the extra `dctkd[<name>]`; `dev` is nbdev's dev_requirements,
# `all` is every extra together (what `make install` and the tests use)
extras = {'dev': dev_requirements, **{k[len('extra_'):]: cfg[k].split() for k in cfg if k.startswith('extra_')}}
extras['all'] = sorted({r for reqs in extras.values() for r in reqs})
console_scripts = cfg.get('console_scripts', '').split()
readme = here / 'README.md'

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else '',
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    url=cfg['git_url'],
    license=lic[0],
    keywords=cfg['keywords'],
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'License :: ' + lic[1],
        'Natural Language :: ' + cfg['language'].title(),
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ] + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=[cfg['lib_name'], cfg['lib_name'] + '.*']) + [cfg['lib_name'] + '.experiments'],
    # the experiment notebooks and plans ship as package data: nbs/experiments becomes dctkd/experiments in the wheel
    package_dir={cfg['lib_name'] + '.experiments': cfg['nbs_path'] + '/experiments'},
    package_data={cfg['lib_name'] + '.experiments': ['*.ipynb', 'plans/*.yaml']},
    include_package_data=True,
    python_requires='>=' + min_python,
    install_requires=requirements,
    extras_require=extras,
    entry_points={
        'console_scripts': console_scripts,
        'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
