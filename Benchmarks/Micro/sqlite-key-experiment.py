#!/usr/bin/env python3
"""What a smaller thread key would save the group committer, measured outside the broker.

Inserts 400,000 message rows the way the pipelined benchmark does (1,000 threads, each thread's 100 sends
arriving together, transactions of 4,000 rows, WAL, synchronous=NORMAL, time-ordered text ids) into the
broker's current `messages` layout (A: thread_id TEXT in the row and in the (thread_id, seq) index) and into
one keyed by an integer thread number (B). C uses 16-byte random BLOB ids (not time-ordered: slower, shown
only as a warning that the id's order matters more than its size). Python's own per-row cost is included, so
the SQLite share of the difference is larger than the printed one.

    python3 Benchmarks/Micro/sqlite-key-experiment.py
"""
import sqlite3, time, uuid, os, random, sys
def run(schema, rows_fn, label):
    path=f"/tmp/sqlite-key-experiment-{label}.db"
    for suf in ("","-wal","-shm"):
        try: os.remove(path+suf)
        except FileNotFoundError: pass
    db=sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=NORMAL"); db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(schema)
    threads=[str(uuid.uuid4()) for _ in range(1000)]
    seq={t:0 for t in threads}
    t0=time.perf_counter(); n=0
    for rnd in range(4):
        # like the benchmark: each thread's 100 sends arrive together; batches of 4000
        batch=[]
        for t in threads:
            for i in range(100):
                seq[t]+=1
                batch.append(rows_fn(t, threads.index(t)+1, seq[t]))
                if len(batch)==4000:
                    db.execute("BEGIN IMMEDIATE"); db.executemany(INS[label], batch); db.execute("COMMIT"); n+=len(batch); batch=[]
        if batch:
            db.execute("BEGIN IMMEDIATE"); db.executemany(INS[label], batch); db.execute("COMMIT"); n+=len(batch)
        db.execute("PRAGMA wal_checkpoint(RESTART)")
    dt=time.perf_counter()-t0
    print(label, n, "rows", round(dt,2), "s", round(n/dt), "rows/s", os.path.getsize(path)//1024//1024, "MiB")
A="""CREATE TABLE messages(id TEXT PRIMARY KEY NOT NULL, thread_id TEXT NOT NULL, seq INTEGER NOT NULL, sender_id TEXT NOT NULL, type TEXT NOT NULL, content TEXT NOT NULL, attachment_url TEXT, attachment_type TEXT, created_at INTEGER NOT NULL, edited_at INTEGER, deleted_at INTEGER, temp_id TEXT);
CREATE UNIQUE INDEX messages_seq ON messages(thread_id, seq);"""
B="""CREATE TABLE messages(id TEXT PRIMARY KEY NOT NULL, thread_no INTEGER NOT NULL, seq INTEGER NOT NULL, sender_id TEXT NOT NULL, type TEXT NOT NULL, content TEXT NOT NULL, attachment_url TEXT, attachment_type TEXT, created_at INTEGER NOT NULL, edited_at INTEGER, deleted_at INTEGER, temp_id TEXT);
CREATE UNIQUE INDEX messages_seq ON messages(thread_no, seq);"""
C="""CREATE TABLE messages(id BLOB PRIMARY KEY NOT NULL, thread_no INTEGER NOT NULL, seq INTEGER NOT NULL, sender_id TEXT NOT NULL, type TEXT NOT NULL, content TEXT NOT NULL, attachment_url TEXT, attachment_type TEXT, created_at INTEGER NOT NULL, edited_at INTEGER, deleted_at INTEGER, temp_id TEXT);
CREATE UNIQUE INDEX messages_seq ON messages(thread_no, seq);"""
INS={"A":"INSERT INTO messages(id,thread_id,seq,sender_id,type,content,attachment_url,attachment_type,created_at,temp_id) VALUES (?,?,?,?,?,?,?,?,?,?)"}
INS["B"]=INS["A"].replace("thread_id","thread_no"); INS["C"]=INS["B"]
cnt=[0]
def idv7():
    cnt[0]+=1
    return "%08x-%04x-7%03x-8%03x-%012x"%(0x19a0000+cnt[0]//65536, cnt[0]%65536, 1, 2, random.getrandbits(48))
content="I pushed the fix for the login redirect, it should be on staging in 10 min"
for r in range(2):  # twice, interleaved
    run(A, lambda t,no,s:(idv7(),t,s,"alice","Text",content,None,None,1795000000000,None), "A")
    run(B, lambda t,no,s:(idv7(),no,s,"alice","Text",content,None,None,1795000000000,None), "B")
    run(C, lambda t,no,s:(uuid.uuid4().bytes,no,s,"alice","Text",content,None,None,1795000000000,None), "C")
for label in "ABC":
    for suf in ("", "-wal", "-shm"):
        try: os.remove(f"/tmp/sqlite-key-experiment-{label}.db{suf}")
        except FileNotFoundError: pass
