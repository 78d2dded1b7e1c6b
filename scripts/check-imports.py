#!/usr/bin/env python3
"""Import loops between the VMM's modules: which file uses which (`crate::`
paths, `use` lines and inline), then every cycle between files that are not
one inside the other (a module and its own submodules may refer to each
other; siblings may not both ways). Prints each loop; exits 1 if any.
  scripts/check-imports.py [SRC_DIR]   (default: vmm/src)"""
import os, re, sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'vmm', 'src')
mods = {}  # module path (tuple) -> file
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith('.rs'):
            continue
        rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
        if rel[-1] in ('mod', 'lib', 'main'):
            rel = rel[:-1]
        mods[tuple(rel)] = os.path.join(d, f)

def target(path):
    """The module file a `crate::a::b::Item` path lands in: its longest module prefix."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None

def strip_tests(text):
    # `#[cfg(test)] mod tests { … }` at the end of a file: test-only uses are not the module's.
    i = text.find('#[cfg(test)]\nmod tests')
    return text if i < 0 else text[:i]

edges = {m: set() for m in mods}
for m, f in mods.items():
    text = strip_tests(open(f).read())
    text = re.sub(r'//[^\n]*', '', text)
    paths = []
    # `use crate::{a::{b, c}, d}` groups, flattened one level at a time.
    for group in re.findall(r'use crate::\{([^;]*)\};', text, re.S):
        for part in re.split(r',\s*(?![^{]*\})', group):
            head = part.strip().split('::{')[0].split('::')
            paths.append(head)
    for p in re.findall(r'crate::((?:\w+::)*\w+)', text):
        paths.append(p.split('::'))
    for p in paths:
        t = target([x for x in p if x])
        if t is not None and t != m and t != ():
            edges[m].add(t)

def related(a, b):
    return a[:len(b)] == b or b[:len(a)] == a

# Tarjan's strongly connected components, over the edges between unrelated modules.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in edges[v]:
        if related(v, w):
            continue
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(comp)
sys.setrecursionlimit(10000)
for v in sorted(mods):
    if v not in index:
        visit(v)
name = lambda m: '::'.join(m) or 'crate'
for comp in sccs:
    print('import loop: ' + ' <-> '.join(sorted(name(m) for m in comp)), file=sys.stderr)
    for a in sorted(comp):
        for b in sorted(edges[a]):
            if b in comp and not related(a, b):
                print(f'  {name(a)} uses {name(b)}', file=sys.stderr)
print(f'check-imports: {len(mods)} modules, {len(sccs)} import loop(s)')
sys.exit(1 if sccs else 0)
