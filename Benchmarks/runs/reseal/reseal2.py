import sys, time, os, random, threading, json; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from h import *; from sio import Sock
def io_w():
    for l in open(f"/proc/{PID}/io"):
        if l.startswith("write_bytes"): return int(l.split()[1])
nthreads=int(sys.argv[1]); nmsg=int(sys.argv[2]); size=int(sys.argv[3]); charset=sys.argv[4]; dur=float(sys.argv[5])
user="ed"+str(random.randint(0,1<<30)); t=tok(user,"ED")
socks=[Sock(t) for _ in range(4)]
rnd=random.Random(1)
chars = [chr(c) for c in range(1,32)] if charset=="ctl" else list("abcdefghijklmnopqrstuvwxyz0123456789")
def content(): return "".join(rnd.choices(chars, k=size))
ths_ids=[rest("POST","/chat/threads",t,json={"type":"group","memberIds":[]}).json()["thread"]["id"] for _ in range(nthreads)]
ids={th:[] for th in ths_ids}
t0=time.time()
def sender(k):
    s=socks[k]
    for th in ths_ids:
        for j in range(k, nmsg, 4):
            # pipeline in windows of 20
            pass
    for th in ths_ids:
        window=[]
        for j in range(k, nmsg, 4):
            window.append(s.emit("chat:send",{"threadId":th,"content":content()}))
            if len(window)>=3:
                for i in window:
                    r=s.wait(i)
                    if r and r.get("success"): ids[th].append((r["message"]["seq"],r["message"]["id"]))
                    else: print("send fail",r); 
                window=[]; time.sleep(0.0)
        for i in window:
            r=s.wait(i)
            if r and r.get("success"): ids[th].append((r["message"]["seq"],r["message"]["id"]))
ths=[threading.Thread(target=sender,args=(k,)) for k in range(4)]
[x.start() for x in ths]; [x.join() for x in ths]
print(f"setup: {nthreads}x{sum(len(v) for v in ids.values())//nthreads} msgs of {size} chars ({charset}) in {time.time()-t0:.1f}s"); stat('after setup')
targets={th:[i for s,i in sorted(v)[:250]] for th,v in ids.items()}
# victim in another company
vt=tok("victim","VIC"); vth=rest("POST","/chat/threads",vt,json={"type":"group","memberIds":[]}).json()["thread"]["id"]; vs=Sock(vt)
def victim(secs):
    lat=[]; end=time.time()+secs
    while time.time()<end:
        a=time.time(); r=vs.call("chat:send",{"threadId":vth,"content":"hi"}); lat.append(time.time()-a); time.sleep(0.02)
    lat.sort(); return lat[len(lat)//2]*1000, lat[int(len(lat)*0.99)]*1000, lat[-1]*1000
print("victim before: p50 %.1f p99 %.1f max %.1f ms"%victim(3))
time.sleep(1)
c0=cpu(); w0=io_w(); t0=time.time(); ok=[0]; bad=[0]
def editor(k):
    s=socks[k]; th=ths_ids[k%nthreads]; tg=targets[th]; j=k//nthreads
    while time.time()-t0<dur and j<len(tg):
        r=s.call("chat:edit",{"threadId":th,"messageId":tg[j],"content":"x"})
        if r and r.get("success"): ok[0]+=1; j+=4//nthreads
        else:
            bad[0]+=1
            if r and r.get("code")!="rate_limited": print(r); return
            time.sleep(0.02)
ths=[threading.Thread(target=editor,args=(k,)) for k in range(4)]
[x.start() for x in ths]
time.sleep(1); print("victim during: p50 %.1f p99 %.1f max %.1f ms"%victim(dur-2))
[x.join() for x in ths]
el=time.time()-t0; time.sleep(1)
c1=cpu(); w1=io_w()
print(f"{ok[0]} edits ok, {bad[0]} refused in {el:.1f}s; broker cpu {c1-c0:.2f}s ({(c1-c0)/max(1,ok[0])*1000:.1f} ms/edit, {(c1-c0)/el:.2f} cores); disk written {(w1-w0)/1e6:.1f} MB ({(w1-w0)/max(1,ok[0])/1e6:.2f} MB/edit)")
stat('end')
