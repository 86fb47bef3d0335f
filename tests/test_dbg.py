from tests.test_integration import *
class D(LabTestCase):
    def makeLab(self):
        return netlab.routed_nat(loss=0.05)
    async def test_x(self):
        port = await self.listen(Factory.forProtocol(Echo))
        client = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        for n in range(5):
            before = len(client.received)
            for i in range(300):
                client.transport.write(b"%d:%d:" % (n, i) + b"p" * 1100)
            await sleep(1)
            srv = [t.flow.stats for t in port.demuxes[2].transports.values()]
            print(n, len(client.received) - before, client.transport._demux.drops, port.demuxes[2].drops, client.transport.flow.stats, srv, self.lab.conntrack_invalid_drops(), self.lab.loss_drops())
