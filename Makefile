# A thin menu over hack/*.sh; every target's logic lives in its script.
.PHONY: all build test verify bench bench-daemon render demo e2e diff image realnode clean

all: build

build:
	hack/build.sh

test:
	hack/test.sh

verify:
	hack/verify.sh

bench:
	hack/bench.sh

bench-daemon:
	hack/bench-daemon.sh

render:
	hack/render.sh

demo:
	hack/demo.sh

e2e:
	hack/e2e.sh

diff:
	hack/diff.sh

image:
	hack/image.sh

realnode:
	hack/realnode.sh

clean:
	rm -rf bin
