#!/usr/bin/env python3
"""Module dependency graph of src/: which module names which (use crate::..., super::..., crate::x::y paths).
Prints cycles among top-level modules and among the files of each directory module."""
import os,re,sys,itertools
root=sys.argv[1] if len(sys.argv)>1 else 'src'
def modpath(f):
    rel=os.path.relpath(f,root)[:-3].split('/')
    if rel[-1] in ('mod','lib'): rel=rel[:-1]
    return rel
files=[os.path.join(d,f) for d,_,fs in os.walk(root) for f in fs if f.endswith('.rs')]
edges={}
for f in files:
    me=modpath(f)
    src=open(f).read()
    # strip tests module bodies roughly: cut at '#[cfg(test)]\nmod tests'
    k=src.find('#[cfg(test)]\nmod tests')
    if k>=0: src=src[:k]
    src=re.sub(r'//.*','',src)
    targets=set()
    for m in re.finditer(r'crate::([a-z_]+)(?:::([a-z_]+))?',src):
        t=[m.group(1)]+([m.group(2)] if m.group(2) else [])
        targets.add(tuple(t))
    for m in re.finditer(r'\bsuper::([a-z_]+)',src):
        base=me[:-1] if (not f.endswith('mod.rs')) else me[:-1]
        targets.add(tuple(base+[m.group(1)]))
    edges[tuple(me)]=targets
mods={tuple(modpath(f)) for f in files}
def resolve(t):
    # longest existing module prefix
    for n in range(len(t),0,-1):
        if tuple(t[:n]) in mods: return tuple(t[:n])
    return None
def graph(level_key):
    g={}
    for a,ts in edges.items():
        for t in ts:
            b=resolve(list(t))
            if b is None: continue
            ka,kb=level_key(a),level_key(b)
            if ka is None or kb is None or ka==kb: continue
            g.setdefault(ka,set()).add(kb)
    return g
def cycles(g):
    out=[]; idx={}; low={}; st=[]; on=set(); c=[0]
    def sc(v):
        idx[v]=low[v]=c[0]; c[0]+=1; st.append(v); on.add(v)
        for w in g.get(v,()):
            if w not in idx: sc(w); low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],idx[w])
        if low[v]==idx[v]:
            comp=[]
            while True:
                w=st.pop(); on.discard(w); comp.append(w)
                if w==v: break
            if len(comp)>1: out.append(comp)
    for v in list(g): 
        if v not in idx: sc(v)
    return out
top=graph(lambda m: m[:1] if m else None)
bad=cycles(top)
dirs={m[0] for m in mods if len(m)>1}
for d in sorted(dirs):
    sub=graph(lambda m,d=d: m[:2] if len(m)>=2 and m[0]==d else None)
    bad+=cycles(sub)
print('top-level edges:')
for a in sorted(top): print(' ','::'.join(a),'->',', '.join(sorted('::'.join(b) for b in top[a])))
if bad:
    print('CYCLES:'); [print('  ',' <-> '.join('::'.join(x) for x in c)) for c in bad]; sys.exit(1)
print('no module cycles')
