import websocket, json, threading, time, queue, sys
sys.path.insert(0,'/tmp/h2'); from h import *
class Sock:
    def __init__(self, token):
        self.ws=websocket.create_connection(f"ws://127.0.0.1:{PORT}/socket.io/?EIO=4&transport=websocket")
        self.ws.recv()  # open
        self.ws.send("40/chat,"+json.dumps({"token":token}))
        self.acks={}; self.events=[]; self.nextid=1; self.lock=threading.Lock(); self.cv=threading.Condition(self.lock); self.closed=False
        while True:
            m=self.ws.recv()
            if m.startswith("40/chat"): break
            if m.startswith("44"): raise Exception(m)
        self.t=threading.Thread(target=self._rd,daemon=True); self.t.start()
    def _rd(self):
        try:
            while True:
                m=self.ws.recv()
                if m=="2": self.ws.send("3"); continue
                if m.startswith("43/chat,"):
                    rest=m[8:]; i=0
                    while rest[i].isdigit(): i+=1
                    with self.cv: self.acks[int(rest[:i])]=json.loads(rest[i:])[0]; self.cv.notify_all()
                elif m.startswith("42/chat,"):
                    with self.lock: self.events.append(m)
        except Exception as e:
            self.closed=True
            with self.cv: self.cv.notify_all()
    def emit(self, ev, data):
        with self.lock: i=self.nextid; self.nextid+=1
        self.ws.send(f"42/chat,{i}"+json.dumps([ev,data])); return i
    def wait(self, i, timeout=30):
        end=time.time()+timeout
        with self.cv:
            while i not in self.acks and not self.closed and time.time()<end: self.cv.wait(0.5)
            return self.acks.pop(i,None)
    def call(self, ev, data, timeout=30): return self.wait(self.emit(ev,data),timeout)
