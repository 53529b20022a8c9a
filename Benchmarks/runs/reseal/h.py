import jwt, time, os, json, socket, requests
PORT=int(os.environ.get("PORT","38401")); DD=os.environ.get("DD","./data")
PID=int(open(os.environ.get("PIDF","./broker.pid")).read())
def secret():
    return open(DD+"/jwt-secret","rb").read()
def tok(u,c,**kw):
    p={"sub":u,"companyId":c,"exp":int(time.time())+3600}; p.update(kw)
    return jwt.encode(p, secret(), algorithm="HS256")
def cpu():
    f=open(f"/proc/{PID}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
def rss():
    for l in open(f"/proc/{PID}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def fds(): return len(os.listdir(f"/proc/{PID}/fd"))
def rest(method, path, t=None, **kw):
    h=kw.pop("headers",{}) 
    if t: h["Authorization"]="Bearer "+t
    return requests.request(method, f"http://127.0.0.1:{PORT}{path}", headers=h, **kw)
def stat(label=""):
    print(f"{label} cpu={cpu():.2f}s rss={rss()/1024:.1f}MB fds={fds()}")
