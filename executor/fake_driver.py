"""A stand-in for `cuda.bindings.driver`'s green-context calls, for machines without a GPU: it checks each
call's argument types against the real bindings and answers with the real bindings' types.

    from cuda.bindings import driver
    fake = FakeDriver(driver, num_sms=132, refuse=lambda sms: sms % 8 != 0)   # a Hopper-like driver
    build = executor.partitions.build_green(fake, 0, None, 8, wrap=lambda raw: raw)

Type checks: where the real driver library is absent, every call is also passed to the real binding first,
which converts (type-checks) its arguments and then fails to load the library; a TypeError there is raised
as is. Handles are also checked with isinstance (the bindings accept plain ints for them). `refuse(sms)`
decides which descriptors fail (CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION), by their total SM count.
"""
from __future__ import annotations

import itertools
from typing import Callable


class FakeDriver:
    def __init__(self, driver, num_sms: int = 132, refuse: Callable[[int], bool] | None = None,
                 short_realised: Callable[[int], bool] | None = None) -> None:
        self.real = driver
        self.num_sms = num_sms
        self.refuse = refuse or (lambda sms: False)
        self.short_realised = short_realised or (lambda sms: False)  # the context reports fewer SMs
        self.calls: list[str] = []
        self._handles = itertools.count(1)
        self._desc_sms: dict[int, int] = {}
        self._ctx_sms: dict[int, int] = {}
        self._probe = self._library_absent()
        for name in ("CUresult", "CUdevResourceType", "CUgreenCtxCreate_flags", "CUstream_flags"):
            setattr(self, name, getattr(driver, name))

    def _library_absent(self) -> bool:
        try:
            self.real.cuDriverGetVersion()
        except TypeError:
            raise
        except Exception:  # the driver library cannot be loaded: real calls stop after checking arguments
            return True
        return False  # a real driver is here: never pass it fake handles

    def _typed(self, name: str, *args) -> None:
        """Pass the arguments through the real binding's conversion (TypeError if they do not fit)."""
        self.calls.append(name)
        if not self._probe:
            return
        try:
            getattr(self.real, name)(*args)
        except TypeError:
            raise
        except Exception:  # library missing: the arguments were accepted
            pass

    def _expect(self, value, cls, what: str) -> None:
        if not isinstance(value, cls):
            raise TypeError(f"{what} must be {cls.__name__}, got {type(value).__name__}")

    def _sm(self, count: int):
        res = self.real.CUdevResource()
        res.type = self.real.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM
        res.sm.smCount = count
        return res

    def _ok(self, *values) -> tuple:
        return (self.real.CUresult.CUDA_SUCCESS, *values)

    # ---- the driver calls partitions.build_green makes ------------------------------------------------
    def cuInit(self, flags: int) -> tuple:
        self._typed("cuInit", flags)
        return self._ok()

    def cuDeviceGet(self, ordinal: int) -> tuple:
        self._typed("cuDeviceGet", ordinal)
        return self._ok(self.real.CUdevice(ordinal))

    def cuDeviceGetDevResource(self, dev, typename) -> tuple:
        self._typed("cuDeviceGetDevResource", dev, typename)
        self._expect(dev, self.real.CUdevice, "device")
        self._expect(typename, self.real.CUdevResourceType, "resource type")
        return self._ok(self._sm(self.num_sms))

    def cuDevSmResourceSplitByCount(self, nb_groups: int, resource, flags: int, min_count: int) -> tuple:
        self._typed("cuDevSmResourceSplitByCount", nb_groups, resource, flags, min_count)
        self._expect(resource, self.real.CUdevResource, "input")
        total = int(resource.sm.smCount)
        count = min(nb_groups, total // min_count)
        rest = total - count * min_count
        return self._ok([self._sm(min_count) for _ in range(count)], count, self._sm(rest))

    def cuDevResourceGenerateDesc(self, resources, count: int) -> tuple:
        self._typed("cuDevResourceGenerateDesc", resources, count)
        if count != len(resources):
            raise ValueError(f"nbResources {count} != {len(resources)} resources")
        sms = sum(int(r.sm.smCount) for r in resources)
        if self.refuse(sms):
            return (self.real.CUresult.CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION, None)
        desc = self.real.CUdevResourceDesc(next(self._handles))
        self._desc_sms[int(desc)] = sms
        return self._ok(desc)

    def cuGreenCtxCreate(self, desc, dev, flags) -> tuple:
        self._typed("cuGreenCtxCreate", desc, dev, flags)
        self._expect(desc, self.real.CUdevResourceDesc, "desc")
        self._expect(dev, self.real.CUdevice, "dev")
        ctx = self.real.CUgreenCtx(next(self._handles))
        self._ctx_sms[int(ctx)] = self._desc_sms[int(desc)]
        return self._ok(ctx)

    def cuGreenCtxStreamCreate(self, ctx, flags, priority: int) -> tuple:
        self._typed("cuGreenCtxStreamCreate", ctx, flags, priority)
        self._expect(ctx, self.real.CUgreenCtx, "greenCtx")
        if int(flags) != int(self.real.CUstream_flags.CU_STREAM_NON_BLOCKING):
            raise ValueError("green context streams must be CU_STREAM_NON_BLOCKING")
        return self._ok(self.real.CUstream(next(self._handles)))

    def cuGreenCtxGetDevResource(self, ctx, typename) -> tuple:
        self._typed("cuGreenCtxGetDevResource", ctx, typename)
        self._expect(ctx, self.real.CUgreenCtx, "hCtx")
        sms = self._ctx_sms[int(ctx)]
        return self._ok(self._sm(sms - 2 if self.short_realised(sms) else sms))
